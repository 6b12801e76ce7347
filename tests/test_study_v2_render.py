"""Study v2's summary page (traits.study.v2_render): the reliability diagram draws the analysis' calibration bins,
the forest plot marks B1's AUROC and chance, the numbers reach the page, every string from the data is escaped,
the PDF is written (and nothing when rendering fails), and the conclusion calls weak results weak."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from markupsafe import escape
from test_study_v2 import synth_rows

from traits.study import v2_render
from traits.study.v2 import analyse
from traits.study.v2_markdown import _iv

ROOT = Path(__file__).resolve().parents[1]
TRUST_V1 = ROOT / "docs" / "study" / "trust-v1" / "summary.json"
HOSTILE = '<script>alert("x")</script>&amp;'
ESCAPED = "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&amp;amp;"


def _perov_rows() -> list[dict]:
    rows = synth_rows(n_rules=6, per_rule=3, seed=5, determined=False)
    for r in rows:
        r["rule"] = "perov:" + r["rule"]
    return rows


@pytest.fixture(scope="module")
def analysis() -> dict:
    a = analyse(synth_rows(n_rules=10, per_rule=4, seed=3), _perov_rows(), n_boot=100, n_perm=100, n_refits=5)
    rows = [dict(r) for r in a["rows"]]
    rows[0]["task"] = HOSTILE
    auroc = {k: dict(v) for k, v in a["auroc"].items()}
    auroc["L2"]["key"] = HOSTILE + "L2"
    spearman = {"pooled": dict(a["spearman"]["pooled"]), HOSTILE + "target": a["spearman"]["band_gap"]}
    return {**a, "rows": rows, "auroc": auroc, "spearman": spearman, "study_version": HOSTILE + "version",
            "deviations": [{"what": HOSTILE + "what", "why": "because"}]}


@pytest.fixture(scope="module")
def written(analysis, tmp_path_factory) -> dict[str, Path]:
    return v2_render.render_summary(analysis, tmp_path_factory.mktemp("v2-summary"))


def _svg(html: str, alt_start: str) -> str:
    m = re.search(r'<img alt="' + re.escape(alt_start) + r'[^"]*" src="data:image/svg\+xml;base64,([^"]+)"', html)
    assert m, f"no SVG figure {alt_start!r} on the page"
    return base64.b64decode(m.group(1)).decode("utf-8")


def test_reliability_diagram_draws_the_calibration_bins(analysis):
    panels = v2_render.reliability_panels(analysis)
    assert [cal for _, cal in panels] == [analysis["trust_score"]["calibration"],
                                          analysis["external_test"]["calibration"]]
    fig = v2_render.reliability_figure(panels)
    for ax, (_, cal) in zip(fig.axes, panels):
        line = next(ln for ln in ax.get_lines() if ln.get_gid() == "reliability-bins")
        assert list(line.get_xdata()) == [b["mean_predicted"] for b in cal["bins"]]
        assert list(line.get_ydata()) == [b["observed"] for b in cal["bins"]]
        diagonal = [ln for ln in ax.get_lines() if list(ln.get_xdata()) == [0, 1] and list(ln.get_ydata()) == [0, 1]]
        assert diagonal, "no diagonal"
        counts = ", ".join(str(b["n"]) for b in cal["bins"])
        assert any(t.get_text().endswith(counts) for t in ax.texts)
    assert len(analysis["trust_score"]["calibration"]["bins"]) == 5


def test_forest_plot_marks_b1_and_chance(analysis):
    fig = v2_render.forest_figure(analysis)
    ax = fig.axes[0]
    vertical = {float(ln.get_xdata()[0]) for ln in ax.get_lines() if len(set(ln.get_xdata())) == 1
                and list(ln.get_ydata()) == [0, 1]}
    assert vertical == {0.5, analysis["auroc"]["B1"]["auroc"]}
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[-1].startswith("L1") and "trust score (chosen per fold)" in labels[0]
    # a row per signal and per candidate, each with its interval
    assert len(labels) == len(analysis["auroc"]) + len(analysis["trust_score"]["per_candidate_loro_auroc"]) + 1


def test_page_shows_the_numbers(analysis, written):
    html = written["html"].read_text(encoding="utf-8")
    t, e = analysis["trust_score"], analysis["external_test"]
    for text in (_iv(analysis["auroc"]["B1"], "auroc"), _iv(analysis["auroc"]["B2"]["delta_vs_B1"], "delta"),
                 _iv(t["loro_auroc"], "auroc"), _iv(t["delta_auroc_over_M0"], "delta"),
                 f"Brier {t['calibration']['brier']:.3f}", f"calibration slope {t['calibration']['slope']:.2f}",
                 _iv(e["auroc"], "auroc"), "weak evidence", t["evidence"]["goal"],
                 analysis["landscaper_claim"]["labelled"]["answer"]):
        assert str(escape(text)) in html, text
    for b in t["calibration"]["bins"]:
        assert f'<td class="num">{b["mean_predicted"]:.2f}</td><td class="num">{b["observed"]:.2f}</td>' in html
    assert "reliability-bins" in _svg(html, "Reliability diagram")
    assert _svg(html, "Forest plot").startswith("<?xml")
    assert 'href="' in html and "PREREGISTRATION.md</a>" in html


def test_every_data_string_is_escaped(written):
    html = written["html"].read_text(encoding="utf-8")
    assert "<script" not in html and HOSTILE not in html
    for suffix in ("L2", "target", "version", "what", ""):
        assert ESCAPED + suffix in html


def test_pdf_is_written(written):
    assert set(written) == {"html", "pdf"}
    assert written["pdf"].read_bytes().startswith(b"%PDF")
    assert written["html"].parent == written["pdf"].parent


def test_nothing_is_written_when_the_pdf_fails(analysis, tmp_path, monkeypatch):
    import traits.report.render as render

    def fail(_html):
        raise RuntimeError("no PDF")

    monkeypatch.setattr(render, "html_to_pdf", fail)
    with pytest.raises(RuntimeError):
        v2_render.render_summary(analysis, tmp_path)
    assert not list(tmp_path.iterdir())


def test_conclusion_calls_weak_results_weak():
    a = json.loads(TRUST_V1.read_text(encoding="utf-8"))
    text = v2_render.conclusion(a)
    assert "B1 (the embedding kNN distance) has AUROC 0.80 [0.64, 0.92], above chance but with a wide interval" in text
    assert "8 of the 9 label-free candidates" in text and "No compared candidate beats B1" in text
    assert "by the registered test (Δ AUROC interval above 0 and Holm p < 0.05)" in text and ", Holm p " in text
    assert "is not reached" in text and "weak evidence" in text and "do not transfer as probabilities" in text
    assert "Landscaper's claim cannot be tested" in text
    strong = json.loads(json.dumps(a))
    strong["auroc"]["B1"] |= {"auroc": 0.95, "low": 0.91, "high": 0.98}
    assert "0.95 [0.91, 0.98], above chance." in v2_render.conclusion(strong)
    strong["auroc"]["B1"] |= {"auroc": 0.6, "low": 0.45, "high": 0.75}
    assert "reaches chance (0.5)" in v2_render.conclusion(strong)
    assert "Perov-5 is not in this analysis" not in text  # trust-v1 has its external test
    assert "Perov-5 is not in this analysis" in v2_render.conclusion(strong | {"external_test": None})


def test_the_gates_section_and_its_contents_line_come_with_the_gate_evidence(analysis):
    html = v2_render.pages(analysis, pdf=False)["html"]
    assert 'href="#gates"' in html and '<section id="gates">' in html
    assert str(escape(analysis["label_free_gates"]["evidence"]["rule"])) in html
    before = {k: v for k, v in analysis.items() if k != "label_free_gates"}  # an analysis made before them
    html = v2_render.pages(before, pdf=False)["html"]
    assert 'href="#gates"' not in html and '<section id="gates">' not in html
