"""Reports: every section, self-contained HTML, escaping, a real PDF, missing probes, atomic writes."""

from __future__ import annotations

import io
import os
import re

import pytest
from result_factory import make_result

from traits.errors import OutputError, TraitsError
from traits.report import figures as F
from traits.report import render as R
from traits.report import render_html, render_report
from traits.results import Accuracy, AuditResult, Finding, HessianResult, SplitMetrics, SurfaceResult

SECTION_IDS = [s.id for s in R.SECTIONS]
PAYLOAD = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def result() -> AuditResult:
    return make_result()


@pytest.fixture(scope="module")
def html(result) -> str:
    return render_html(result)


@pytest.fixture(scope="module")
def rendered(result, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return render_report(result, out), out


def test_every_section_in_order_with_key_numbers(result, html):
    positions = [html.find(f'<section id="{sid}">') for sid in SECTION_IDS]
    assert all(p >= 0 for p in positions), dict(zip(SECTION_IDS, positions))
    assert positions == sorted(positions)
    verdict = html[positions[1]:positions[2]]
    # the findings table comes before the gates table, and shows the overall status
    assert "badge-fail" in verdict and verdict.index("Findings") < verdict.index("Gates")
    for f in result.findings:
        assert f.statement.replace("'", "&#39;") in verdict
    for number in (
        result.accuracy["id"].mae, result.accuracy["ood"].mae, result.accuracy["ood"].r2,
        result.hessian["ood"].top_eigenvalues[0], result.metrics["id"].robust_radius,
        result.metrics["ood"].basin_area, result.ratios["lambda_ratio"],
    ):
        assert R.fmt_num(number) in html or R.fmt_num(number, 3) in html, number
    assert result.provenance.checkpoint_sha256 in html
    assert result.provenance.manifest_hash in html
    assert "eV/atom" in html and "(eV/atom)²" in html
    # missing grid values are listed as non-finite
    assert "3 of 225 2D grid points non-finite" in html
    for name in ("ratios", "parity", "shift", "eigenvalues", "density", "surface_2d", "curves_1d"):
        assert f'id="fig-{name}"' in html


def test_html_is_self_contained(html):
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert not re.search(r"<link\b[^>]*stylesheet", html, re.I)
    assert "@import" not in html and "url(" not in html
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', html)
    assert len(sources) == 7 and all(s.startswith("data:image/svg+xml;base64,") for s in sources)
    assert "<style>" in html and "@page" in html  # the CSS is inlined
    assert "<script" not in html.lower()


def test_strings_from_the_result_are_escaped():
    spec = make_result().spec
    spec["name"] = PAYLOAD
    spec["description"] = f"desc {PAYLOAD}"
    spec["data"]["target_column"] = PAYLOAD
    evil = make_result(
        name=f"audit {PAYLOAD}",
        description=f"about {PAYLOAD}",
        omit=["Fe", PAYLOAD],
        unit=f"eV/$atom$ {PAYLOAD}",  # also not mathtext: a '$' must not break the figures
        spec=spec,
        skipped={PAYLOAD: 2},
        n_id=20,
        n_ood=20,
    )
    evil.findings.append(Finding(id="x", level="warn", statement=f"statement {PAYLOAD}"))
    evil.provenance.command = f"traits audit '{PAYLOAD}'"
    text = render_html(evil)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<script>alert(1)" not in text
    assert "<script" not in text.lower()


def test_pdf_is_valid_with_headings_and_name(result, rendered):
    from pypdf import PdfReader

    paths, out = rendered
    assert set(paths) == {"html", "pdf"}
    assert paths["pdf"] == out / "report.pdf" and paths["html"] == out / "report.html"
    data = paths["pdf"].read_bytes()
    assert data.startswith(b"%PDF")
    reader = PdfReader(io.BytesIO(data))
    n = len(reader.pages)
    assert n >= 3
    text = "\n".join(page.extract_text() for page in reader.pages)
    flat = " ".join(text.split())
    numbered = [s for s in R.SECTIONS if s.numbered]
    for number, section in enumerate(numbered, 1):
        assert f"{number}. {section.heading}" in flat, section.heading
    assert "Summary" in flat.split("1. Verdict")[0]
    assert result.name in flat
    assert f"page 1 of {n}" in flat and f"page {n} of {n}" in flat
    # no temporary files are left beside the report
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.pdf"]


def test_missing_probes_render_as_not_run(tmp_path):
    bare = make_result(hessian={}, surface=None, accuracy={"id": make_result().accuracy["id"]})
    assert bare.metrics == {} and bare.surface is None
    text = render_html(bare)
    for sid in SECTION_IDS:
        assert f'<section id="{sid}">' in text
    assert "Hessian probe: not run." in text
    assert "Loss-surface probe: not run." in text
    old = make_result(shift=None)  # a result written before the domain-shift diagnostics existed
    text_old = render_html(old)
    assert '<section id="shift">' in text_old and "Domain-shift diagnostics: not run." in text_old
    assert 'id="fig-shift"' not in text_old
    assert "OOD accuracy: not run." in text
    assert 'id="fig-density"' not in text and 'id="fig-surface_2d"' not in text
    nothing = make_result(hessian={}, surface=None, accuracy={}, splits={}, skipped={})
    text = render_html(nothing)
    assert "Accuracy: not run." in text
    pdf = render_report(nothing, tmp_path, formats=("pdf",))["pdf"]
    assert pdf.read_bytes().startswith(b"%PDF") and not (tmp_path / "report.html").exists()


def test_non_finite_values_render_masked():
    base = make_result(n_id=20, n_ood=20)
    surface = base.surface.model_copy(deep=True)
    surface.grids["ood"] = [[None] * len(row) for row in surface.grids["ood"]]  # all diverged
    surface.grids["id"][7][7] = None  # even at theta
    surface.curves["id"][1][3] = None
    surface.curves["train"] = [[None] * len(c) for c in surface.curves["train"]]
    result = make_result(surface=surface, n_id=20, n_ood=20)
    text = render_html(result)
    assert "225 of 225 2D grid points non-finite" in text
    assert "1 of 225 2D grid points non-finite, at (α, β) = (0, 0)" in text
    assert "(2, −0.7)" in text  # the (direction, α) of the missing curve point
    assert 'id="fig-surface_2d"' in text and 'id="fig-curves_1d"' in text


EDGE_CASES = {
    "empty surface": lambda base: {"surface": SurfaceResult(span=1.0, tolerance=0.1, alphas_1d=[])},
    "bare hessian": lambda base: {"hessian": {
        "id": HessianResult(backend="pyhessian", n_samples=3, loss=None, top_eigenvalues=[]),
        "ood": HessianResult(backend="pyhessian", n_samples=3, loss=None, top_eigenvalues=[1.0], converged=False),
    }},
    "accuracy with gaps": lambda base: {"accuracy": {
        "id": Accuracy(n=0, mae=None, rmse=None, r2=None),
        "ood": Accuracy(n=3, mae=1.0, rmse=1.0, r2=None, predictions=[None, 1.0, 2.0], targets=[0.0, 1.0, 2.5]),
    }},
    "empty metrics, unknown ratio": lambda base: {
        "metrics": {"id": SplitMetrics(), "ood": SplitMetrics(robust_radius=0.3, robust_radius_censored=True)},
        "ratios": {"something_new_ratio": 1.5, "mae_ratio": None},
    },
    "mae loss, no unit, nothing omitted": lambda base: {"loss": "mae", "unit": "", "omit": []},
    "unknown split names": lambda base: {"splits": {"test": base.splits["id"]}},
    "many directions": lambda base: {"surface": base.surface.model_copy(update={
        "curves": {s: c * 3 for s, c in base.surface.curves.items()}})},
}


@pytest.mark.parametrize("case", list(EDGE_CASES))
def test_unusual_results_still_render(case):
    base = make_result(n_id=10, n_ood=10, with_train=False)
    text = render_html(make_result(n_id=10, n_ood=10, with_train=False, **EDGE_CASES[case](base)))
    for sid in SECTION_IDS:
        assert f'<section id="{sid}">' in text
    if case == "empty metrics, unknown ratio":
        assert "≥ 0.3" in text and "something new" in text
    if case == "many directions":
        assert "the first 4 of 6 directions are drawn" in text


def test_rendering_is_deterministic_across_a_json_round_trip(result, html):
    again = AuditResult.model_validate_json(result.model_dump_json())
    assert render_html(again) == html


def test_unwritable_output_directory_raises_and_leaves_nothing(result, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(OutputError):
        render_report(result, blocker / "out", formats=("html",))
    assert not (blocker.parent / "out").exists()
    if hasattr(os, "geteuid") and os.geteuid() != 0:  # root can write anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            with pytest.raises(OutputError):
                render_report(result, locked, formats=("html",))
            assert list(locked.iterdir()) == []
        finally:
            locked.chmod(0o700)


def test_a_failed_write_removes_the_files_already_written(result, tmp_path, monkeypatch):
    monkeypatch.setattr(R, "_pdf_bytes", lambda html: b"%PDF-1.7 stub")

    def refuse(path, data):
        raise OutputError(f"{path}: cannot write (disk full)")

    import traits.files

    monkeypatch.setattr(traits.files, "write_bytes_atomic", refuse)
    with pytest.raises(OutputError, match="disk full"):
        render_report(result, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_unknown_format_is_an_error(result, tmp_path):
    with pytest.raises(TraitsError, match="unknown report format"):
        render_report(result, tmp_path, formats=("docx",))


def test_url_fetcher_serves_only_bundled_files():
    fetcher = R.make_url_fetcher()
    root = R.templates_dir()
    for url in ("http://example.com/x.png", "https://example.com/a.css", "ftp://example.com/f",
                "file:///etc/passwd", (root / ".." / "pyproject.toml").resolve().as_uri(),
                "file://evil.example.com/share/x.png"):
        with pytest.raises(R.RefusedURL):
            fetcher(url)
    css = fetcher((root / "report.css").as_uri())
    assert b"@page" in css.read()
    data = fetcher("data:text/plain;base64,aGk=")
    assert data.read() == b"hi"


def test_pdf_rendering_never_fetches_from_the_network(monkeypatch, caplog):
    asked = []

    def spy(root=None):
        fetcher = make_fetcher(root)
        inner = fetcher.fetch

        def fetch(url, headers=None):
            asked.append(url)
            return inner(url, headers)

        fetcher.fetch = fetch
        return fetcher

    make_fetcher = R.make_url_fetcher
    monkeypatch.setattr(R, "make_url_fetcher", spy)
    pdf = R._pdf_bytes('<p>x</p><img src="http://127.0.0.1:9/x.png"><link rel="stylesheet" href="https://e.invalid/a.css">')
    assert pdf.startswith(b"%PDF")
    assert "http://127.0.0.1:9/x.png" in asked and "https://e.invalid/a.css" in asked
    assert "refused to fetch" in caplog.text


def test_templates_are_found():
    root = R.templates_dir()
    assert (root / "report.html.j2").is_file() and (root / "report.css").is_file()
    assert (root / "partials" / "verdict.html.j2").is_file()


def test_figures_are_closed_and_reproducible():
    import matplotlib.pyplot as plt

    def make():
        with F.style():
            return F.density_figure({"id": ([0.0, 1.0, 2.0], [1.0, 0.0, 0.5])}, "(eV/atom)²")

    first = F.encode(make(), svg=True, png_dpi=50)
    second = F.encode(make(), svg=True, png_dpi=50)
    assert first == second
    assert first.svg.startswith("data:image/svg+xml;base64,") and first.png.startswith("data:image/png;base64,")
    assert plt.get_fignums() == []


def test_surface_scale_goes_log_only_across_orders_of_magnitude():
    assert F.surface_scale({"id": [[1.0, 2.0], [None, 3.0]]}).log is False
    wide = F.surface_scale({"id": [[0.01, 0.02]], "ood": [[None, 5.0]]})
    assert wide.log is True and wide.vmin == pytest.approx(-2) and wide.vmax == pytest.approx(0.69897, abs=1e-4)
    assert F.surface_scale({"id": [[None]]}) is None


def test_number_formatting():
    assert R.fmt_num(None) == "—"
    assert R.fmt_num(float("nan")) == "NaN"
    assert R.fmt_num(float("inf")) == "∞"
    assert R.fmt_num(-0.5) == "−0.5"
    assert R.fmt_num(1.234e-7) == "1.234×10⁻⁷"
    assert R.fmt_num(-2.5e12) == "−2.5×10¹²"
    assert R.fmt_num(True) == "yes"
    assert R.fmt_seconds(200.0) == "3 min 20 s"


def test_loss_jumps_are_marked_on_the_1d_curves(monkeypatch):
    """Each stored jump position becomes a star on its split's curve, the nearest one a dash-dot line."""
    import matplotlib.pyplot as plt

    alphas = [-1.0 + 0.1 * i for i in range(21)]
    smooth = [1.0 + a * a for a in alphas]
    stepped = [v + (0.8 if a >= 0.35 else 0.0) for v, a in zip(smooth, alphas)]
    sets = [
        F.CurveSet(split="id", curves=[smooth, smooth], loss0=1.0),
        F.CurveSet(split="ood", curves=[stepped, smooth], loss0=1.0, jumps=[[0.37, -0.8], []]),
    ]
    with F.style():
        fig = F.curves_1d_figure(alphas, sets, 0.1)
    ax = fig.axes[0]
    stars = [ln for ln in ax.lines if ln.get_marker() == "*"]
    assert len(stars) == 1 and list(stars[0].get_xdata()) == [0.37, -0.8]
    # drawn on the curve, just inside the jump: L(0.3) and L(-0.8) of the stepped curve
    assert list(stars[0].get_ydata()) == pytest.approx([stepped[13], stepped[2]])
    dashdot = [ln for ln in ax.lines if ln.get_linestyle() == "-." and ln.get_xdata()[0] == 0.37]
    assert len(dashdot) == 1
    assert not [ln for ln in fig.axes[1].lines if ln.get_marker() == "*"]  # the second direction is smooth
    assert "loss jump" in [t.get_text() for t in fig.legends[0].get_texts()]
    plt.close(fig)

    # the report passes each split's stored positions (results.surface.landscape[split].jumps_1d)
    seen = {}
    real = F.curves_1d_figure

    def spy(alphas, sets, tolerance, **kwargs):
        seen.update({s.split: list(s.jumps) for s in sets})
        return real(alphas, sets, tolerance, **kwargs)

    monkeypatch.setattr(F, "curves_1d_figure", spy)
    monkeypatch.setenv("TRAITS_REPORT_WORKERS", "1")  # the spy records in the process that draws the figure
    result = make_result()
    from traits.results import LandscapeSplit

    old = result.surface.landscape.get("ood") or LandscapeSplit()
    result.surface.landscape["ood"] = old.model_copy(update={"jumps_1d": [[0.25], []]})
    html = render_html(result)
    assert seen["ood"] == [[0.25], []] and seen["id"] == []
    assert "Stars mark loss jumps" in html and "No loss jump was found along these curves" not in html
    plain = render_html(make_result())
    assert "No loss jump was found along these curves" in plain and "Stars mark loss jumps" not in plain


def test_the_entropy_difference_is_labelled_as_a_difference():
    result = make_result()
    result.ratios["entropy_ood_minus_id"] = -1.25
    html = render_html(result)
    row = re.search(r"<tr><td>loss entropy: a difference, OOD − ID.*?</tr>", html)
    assert row is not None, "no entropy row in the ratios table"
    assert R.fmt_num(-1.25, 3) in row.group(0) and "below 0 (a difference)" in row.group(0)


def test_a_report_without_surface_probes_renders_its_hessian_and_metrics():
    from traits.report.render import render_html

    result = make_result(surface=None)
    assert result.surface is None and result.metrics
    html = render_html(result)
    assert "certified" in html and "λ<sub>min</sub>" in html
