"""report-interactive.html (traits.report.interactive): written atomically, self-contained and offline (nothing
remote, plotly's bundle inlined once, a Content-Security-Policy that lets only its own scripts run), every string
escaped, label-free and surface-less results handled; and, where Debian's chromium is installed, rendered in a
headless browser with networking disabled: the 3D surfaces draw (WebGL canvases), the 1D curves draw (SVG), and a
table sorts when its header is clicked."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.result_factory import make_result
from traits.report import interactive as I
from traits.results import AuditResult

HOSTILE = "<img src=x onerror=alert(1)>"
ESCAPED = "&lt;img src=x onerror=alert(1)&gt;"
CLOSER = "</script><script>alert(2)</script>"

_SCRIPT = re.compile(r"(<script\b[^>]*>)(.*?)(</script\s*>)", re.IGNORECASE | re.DOTALL)
_REMOTE = re.compile(r"""\b(?:src|href|action|srcset|data|poster)\s*=\s*["']?\s*(?:[a-z][a-z0-9+.-]*:)?//""",
                     re.IGNORECASE)


def _without_script_bodies(text: str) -> str:
    """The page with every script's body emptied (the tags stay): plotly's bundle holds URLs in string
    literals (map tile attributions, its logo link) that no page attribute carries."""
    return _SCRIPT.sub(lambda m: m.group(1) + m.group(3), text)


def _scripts(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in _SCRIPT.finditer(text)]


def _figures(text: str) -> dict[str, dict]:
    out = {}
    for tag, body in _scripts(text):
        if 'type="application/json"' in tag:
            target = re.search(r'data-target="([^"]+)"', tag).group(1)
            out[target] = json.loads(body)
    return out


def _with_plane(result: AuditResult) -> AuditResult:
    result = result.model_copy(deep=True)
    result.surface.plane_grids = {s: [[None if v is None else v * (1 + 40 * i * i) for v in row]
                                      for i, row in enumerate(g)] for s, g in result.surface.grids.items()}
    return result


@pytest.fixture(scope="module")
def result() -> AuditResult:
    return _with_plane(make_result())


@pytest.fixture(scope="module")
def page(result, tmp_path_factory) -> Path:
    return I.write_interactive(result, tmp_path_factory.mktemp("interactive"))


def test_writes_the_page(page, result):
    assert page.name == I.INTERACTIVE_NAME and page.is_file()
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert result.name in text and I.LEVEL_WORDS[result.status] in text
    assert "reference record of this audit" in text
    figures = _figures(text)
    assert set(figures) == {"plot-surfaces", "plot-plane", "plot-curves"}
    # one 3D scene per split with a grid, one colour axis for all, θ marked in each
    surf = figures["plot-surfaces"]
    surfaces = [t for t in surf["data"] if t["type"] == "surface"]
    assert len(surfaces) == len(result.surface.grids)
    assert {t["coloraxis"] for t in surfaces} == {"coloraxis"} and len({t["scene"] for t in surfaces}) == len(surfaces)
    assert sum(t["type"] == "scatter3d" and t["name"] == "θ" for t in surf["data"]) == len(surfaces)
    scene = surf["layout"]["scene"]
    assert "filter-normalised" in scene["xaxis"]["title"]["text"] and "eV/atom" in scene["zaxis"]["title"]["text"]
    # the 1D curves: one line per split and direction
    curves = figures["plot-curves"]
    assert len(curves["data"]) == sum(len(c) for c in result.surface.curves.values())


def test_figures_are_valid_plotly(page):
    go = pytest.importorskip("plotly.graph_objects")
    for fig in _figures(page.read_text(encoding="utf-8")).values():
        go.Figure(fig)  # raises on an unknown attribute or a bad value


def test_non_finite_losses_are_gaps(page, result):
    surf = _figures(page.read_text(encoding="utf-8"))["plot-surfaces"]
    ood = next(t for t in surf["data"] if t["type"] == "surface" and t["name"] == "OOD")
    grid = result.surface.grids["ood"]
    missing = {(i, j) for i, row in enumerate(grid) for j, v in enumerate(row) if v is None}
    assert missing
    # the figure's z is [β][α]; the grid is [α][β]
    assert {(i, j) for j, row in enumerate(ood["z"]) for i, v in enumerate(row) if v is None} == missing


def test_nothing_remote(page):
    text = page.read_text(encoding="utf-8")
    markup = _without_script_bodies(text)
    assert not _REMOTE.search(markup), _REMOTE.search(markup)
    assert not re.search(r"url\(\s*['\"]?\s*(?:https?:)?//", markup, re.IGNORECASE)
    assert "@import" not in markup
    for tag, _body in _scripts(text):
        assert "src" not in tag.lower()
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', text).group(1)
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]


def test_plotly_bundle_inlined_once(page):
    text = page.read_text(encoding="utf-8")
    bundle = I.plotly_bundle()
    assert len(bundle) > 1_000_000
    assert text.count(bundle[:300]) == 1 and bundle in text
    assert len(re.findall(r"plotly\.js v\d", text)) == 1


def test_only_the_pages_own_scripts_may_run(page):
    """The CSP names every executable script by its hash, and nothing else."""
    text = page.read_text(encoding="utf-8")
    csp = re.search(r'content="(default-src[^"]+)"', text).group(1)
    allowed = set(re.findall(r"'sha256-([A-Za-z0-9+/=]+)'", csp))
    executable = [body for tag, body in _scripts(text) if "application/json" not in tag]
    assert len(executable) == 2
    assert {base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() for b in executable} == allowed
    assert not re.search(r"\son[a-z]+\s*=", _without_script_bodies(text), re.IGNORECASE)


def test_hostile_strings_are_escaped(tmp_path):
    result = _with_plane(make_result(name=HOSTILE, description=HOSTILE + CLOSER, unit=HOSTILE))
    acc = result.accuracy["ood"]
    acc.ids[0] = HOSTILE
    acc.ids[1] = CLOSER
    acc.formulas = [HOSTILE if i == 0 else "Fe2O3" for i in range(len(acc.ids))]
    result.surface.grids[HOSTILE] = copy.deepcopy(result.surface.grids["id"])
    result.surface.curves[CLOSER] = copy.deepcopy(result.surface.curves["id"])
    result.findings[0].statement = HOSTILE
    text = I.write_interactive(result, tmp_path).read_text(encoding="utf-8")
    markup = _without_script_bodies(text)
    assert HOSTILE not in text and "<img" not in markup and "alert(2)</script>" not in text
    assert ESCAPED in markup
    assert markup.count("<title>") == 1 and f"<title>{ESCAPED}" in markup
    # the JSON blocks hold no markup character; plotly shows the strings literally (as entities)
    for tag, body in _scripts(text):
        if "application/json" in tag:
            assert "<" not in body and ">" not in body and "&" not in body
    figures = _figures(text)
    names = {t["name"] for t in figures["plot-surfaces"]["data"]}
    assert ESCAPED in names
    assert ESCAPED in figures["plot-surfaces"]["layout"]["scene"]["zaxis"]["title"]["text"]
    # the ids land in the table as text, sortable
    assert f'<td class="id">{ESCAPED}</td>' in markup
    assert len(_scripts(text)) == 2 + len(figures)  # no string closed a script block or opened one


def test_label_free_has_no_compound_tables(tmp_path):
    result = make_result(mode="label-free", accuracy={})
    text = I.write_interactive(result, tmp_path).read_text(encoding="utf-8")
    assert "compounds-1" not in text and "label-free audit has no targets" in text


def test_without_surfaces_says_so(tmp_path):
    text = I.write_interactive(make_result(surface=None), tmp_path).read_text(encoding="utf-8")
    assert "measured no loss surfaces" in text
    assert "application/json" not in text and I.plotly_bundle()[:300] not in text
    assert len(_scripts(text)) == 1  # the table sorter only
    assert 'class="sortable"' in text


def test_compound_rows_worst_first_and_capped():
    result = make_result()
    tables = I.compound_tables(result, max_rows=7)
    ood = next(t for t in tables if t["split"] == "ood")
    assert ood["n"] == len(result.accuracy["ood"].targets) and ood["shown"] == len(ood["rows"]) == 7
    errors = [r["abs_error"] for r in ood["rows"]]
    assert errors == sorted(errors, reverse=True)
    worst = max(abs(p - t) for p, t in zip(result.accuracy["ood"].predictions, result.accuracy["ood"].targets))
    assert errors[0] == pytest.approx(worst)


def test_ratio_and_gate_rows(result):
    ratios = {q["key"]: q for q in I.ratio_rows(result)}
    assert set(ratios) == set(result.ratios)
    for name, iv in result.ratio_intervals.items():
        assert ratios[name]["low"] == iv.low and ratios[name]["high"] == iv.high
    gates = I.gate_rows(result)
    assert [g["name"] for g in gates] == [g.name for g in result.gates]


def test_log_ticks():
    vals, text = I.log_ticks(0.04, 2.6)
    assert vals == [0.05, 0.1, 0.2, 0.5, 1.0, 2.0] and text[0] == "0.05"
    vals, text = I.log_ticks(0.05, 3e9)
    assert 1 <= len(vals) <= 7 and text[-1] == "10⁸"


# ----------------------------------------------------------------------------------------------
# In a headless browser, offline

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: No request can leave the browser: every host name fails to resolve and every proxied request goes to a closed
#: port (the page is a file: URL and must need neither).
OFFLINE = ["--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]


def _chromium(url: str, tmp_path: Path, *extra: str) -> str:
    cmd = [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-extensions",
           "--disable-background-networking", "--disable-sync", "--disable-component-update",
           f"--user-data-dir={tmp_path / 'profile'}", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
           "--window-size=1280,2000", "--virtual-time-budget=10000", *OFFLINE, *extra, "--dump-dom", url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_renders_offline_in_a_headless_browser(page, tmp_path):
    dom = _without_script_bodies(_chromium(page.as_uri(), tmp_path))
    assert 'class="main-svg"' in dom  # plotly drew the 1D curves (and the 3D scenes' SVG overlays)
    assert "WebGL is not supported" not in dom
    scenes = re.findall(r'class="gl-container"', dom)
    assert len(scenes) >= 2, "the 3D surfaces were not drawn"
    assert len(re.findall(r"<canvas\b", dom)) >= len(scenes)
    assert not _REMOTE.search(dom), _REMOTE.search(dom)  # plotly's logo link is off; nothing remote was added


SORT_PROBE = """<!DOCTYPE html><html><body><pre id="out">pending</pre>
<iframe id="f" src="PAGE" width="1200" height="900"></iframe>
<script>
document.getElementById("f").addEventListener("load", function () {
  var out = document.getElementById("out");
  try {
    var d = this.contentDocument, tables = d.querySelectorAll("table[id^=compounds-]");
    var t = tables[tables.length - 1];
    var th = t.tHead.rows[0].cells[t.tHead.rows[0].cells.length - 2];  /* signed error */
    th.click();
    var keys = Array.prototype.map.call(t.tBodies[0].rows, function (r) {
      return r.cells[r.cells.length - 2].getAttribute("data-v"); });
    out.textContent = JSON.stringify({sort: th.getAttribute("aria-sort"), keys: keys});
  } catch (e) { out.textContent = "error " + e; }
});
</script></body></html>"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_a_table_sorts_when_its_header_is_clicked(tmp_path):
    page = I.write_interactive(make_result(surface=None), tmp_path / "out")  # no WebGL to draw: quick
    probe = page.parent / "sort-probe.html"
    probe.write_text(SORT_PROBE.replace("PAGE", page.name), encoding="utf-8")
    dom = _chromium(probe.as_uri(), tmp_path, "--allow-file-access-from-files")
    found = re.search(r'<pre id="out">([^<]*)</pre>', dom).group(1)
    assert not found.startswith(("pending", "error")), found
    state = json.loads(found.replace("&quot;", '"'))
    keys = [float(k) for k in state["keys"] if k]
    assert state["sort"] == "ascending" and len(keys) > 10 and keys == sorted(keys)


def test_an_audit_with_report_interactive_writes_the_page_beside_a_script_free_report(tmp_path):
    """Wired in: `report: {interactive: true}` makes the audit (and `traits report` from its results.json) write
    report-interactive.html; report.html stays free of script either way."""
    from test_audit import QUICKSTART, SMALL

    from traits.audit import run_audit
    from traits.report.render import render_report
    from traits.spec import load_spec

    spec = load_spec(QUICKSTART, overrides={**SMALL, "report.interactive": True, "probes.hessian.enabled": False,
                                            "report.formats": ["json", "html"]})
    result = run_audit(spec, tmp_path / "a")
    page = tmp_path / "a" / "report-interactive.html"
    assert page.is_file() and "<script" in page.read_text()
    assert "<script" not in (tmp_path / "a" / "report.html").read_text()
    again = render_report(result, tmp_path / "b", formats=("html",))
    assert again["interactive"] == tmp_path / "b" / "report-interactive.html" and again["interactive"].is_file()
    result.spec["report"]["interactive"] = False
    assert "interactive" not in render_report(result, tmp_path / "c", formats=("html",))


def test_compound_rows_carry_the_per_compound_values_joined_by_id():
    """The embedding distance stored beside each compound's id appears in that compound's row, in any order the
    sample keeps; a result whose sample stores no ids gets no such column."""
    result = make_result()
    assert not I.compound_tables(result)[0]["extra"]
    acc = result.accuracy["ood"]
    sample = result.shift.samples["ood"]
    order = list(reversed(range(len(acc.ids))))  # the sample in another order than the accuracy's
    sample.ids = {"embedding": [acc.ids[i] for i in order]}
    sample.distances["embedding"] = [float(i) for i in order]  # compound i's distance is i
    ood = next(t for t in I.compound_tables(result, max_rows=9) if t["split"] == "ood")
    assert len(ood["extra"]) == 1 and ood["extra"][0].startswith("embedding distance")
    for row in ood["rows"]:
        assert row["extra"] == [float(acc.ids.index(row["id"]))]
    html = I.render_interactive(result)
    assert "embedding distance to training" in html
