"""The screening report (`traits screen`): plain tick labels (never raw mathtext), a figure that fits the PDF
page and a page 1 that flows on into it, its own title and running header, the checkpoint named in the
provenance, the first paragraph generated from the numbers, per-element summaries beside the per-chemistry ones,
and every user string escaped."""

from __future__ import annotations

import base64
import gzip
import io
import json
import re
from pathlib import Path

import matplotlib.text
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from traits.data.sources import sample_path
from traits.report import figures as F
from traits.screen import (
    FEW_COMPOUNDS,
    _element_figure,
    _figure,
    chemistry_summary,
    render_screen_report,
    screen,
    screen_sentences,
    screen_title,
)

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "traits" / "data" / "quickstart" / "model.safetensors"


def _row(rid, elements, prediction, rel, knn_rel, flag):
    return {"id": rid, "source": f"{rid}.cif", "formula": "".join(elements), "chemsys": "-".join(sorted(elements)),
            "elements": sorted(elements), "prediction": prediction, "unit": "eV/atom", "last_layer_std": 0.03 * rel,
            "last_layer_sigma": 0.2, "knn_distance": 2.5 * knn_rel if knn_rel is not None else None,
            "knn_relative": knn_rel, "relative_uncertainty": rel, "flag": flag}


def _doc(rows, calibrated=True, **extra) -> dict:
    doc = {"checkpoint": "model.safetensors", "format": "traits", "target": "formation_energy_per_atom",
           "unit": "eV/atom", "model": {"architecture": "cgcnn", "omit": ["Fe"], "seed": 0, "data_hash": "ab" * 32,
                                        "trained_with": "0.1.0", "n_train": 1360, "id_mae": 0.146},
           "traits_version": "0.1.0", "calibrated": calibrated,
           "calibration": "model.calibration.json" if calibrated else None,
           "calibration_note": "calibrated" if calibrated else "no calibration found",
           "id_reference": ({"last_layer_std": {"median": 0.03, "p95": 0.055, "n": 170},
                             "knn_distance": {"median": 2.5, "p95": 4.3, "n": 170}, "mae": 0.146}
                            if calibrated else None),
           "n_read": len(rows), "n_screened": len(rows), "skipped": {},
           "n_flagged": sum(r["flag"] == "high" for r in rows), "n_nan": sum(r["flag"] == "nan" for r in rows),
           "seconds_scoring": 0.5, "compounds": rows,
           "by_element": chemistry_summary(rows, "elements", calibrated),
           "by_chemsys": chemistry_summary(rows, "chemsys", calibrated)}
    doc.update(extra)
    return doc


# a narrow range of relative uncertainties (less than one decade): the case whose default log-axis labels were
# raw mathtext ($\mathdefault{2\times10^{0}}$)
ROWS = [_row("a", ["Fe", "O"], -1.2, 0.8, 0.9, "ok"), _row("b", ["Fe", "P"], -0.5, 1.1, 1.3, "ok"),
        _row("c", ["Ce", "Y"], -0.02, 2.3, 1.6, "high"), _row("d", ["O", "Ti"], -2.9, 0.7, 0.7, "ok"),
        _row("e", ["Fe", "O", "Ti"], -1.6, 1.4, 1.9, "high"), _row("f", ["Mg", "O"], -2.8, 0.9, 0.8, "ok")]


def _texts(fig) -> list[str]:
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    return [t.get_text() for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text()]


@pytest.mark.parametrize("calibrated", [True, False])
def test_figures_have_plain_tick_labels_and_the_page_width(calibrated):
    doc = _doc(ROWS, calibrated=calibrated)
    for build in (_figure, _element_figure):
        with F.style():
            fig = build(doc)
            assert fig.get_figwidth() <= F.PAGE_WIDTH + 1e-9
            texts = _texts(fig)
        assert texts
        raw = [t for t in texts if "$" in t or "\\" in t or "mathdefault" in t]
        assert not raw, raw
    with F.style():
        fig = _figure(doc)
        FigureCanvasAgg(fig)
        fig.canvas.draw()
        labels = [t.get_text() for t in fig.axes[0].get_yticklabels() if t.get_text()]
    assert "1" in labels and len(labels) >= 3, labels  # more than the powers of ten on a narrow range


def test_per_element_summary_counts_a_compound_for_each_element():
    by = {g["name"]: g for g in chemistry_summary(ROWS, "elements", True)}
    assert by["Fe"]["count"] == 3 and by["O"]["count"] == 4 and by["Ti"]["count"] == 2
    assert by["Fe"]["mean_prediction"] == pytest.approx((-1.2 - 0.5 - 1.6) / 3)
    assert by["Fe"]["mean_relative_uncertainty"] == pytest.approx((0.8 + 1.1 + 1.4) / 3)
    assert by["Fe"]["share_high"] == pytest.approx(1 / 3)
    assert by["Ce"]["flag"] == "check" and by["Mg"]["flag"] == "ok"
    systems = {g["name"]: g for g in chemistry_summary(ROWS, "chemsys", True)}
    assert sum(g["count"] for g in systems.values()) == len(ROWS)
    assert systems["Fe-O-Ti"]["mean_prediction"] == pytest.approx(-1.6)


def test_title_names_what_was_screened_and_the_model_not_the_file():
    doc = _doc(ROWS)
    assert screen_title(doc) == "6 structures screened with a CGCNN model of formation energy per atom"
    assert "model.safetensors" not in screen_title(doc)
    one = _doc(ROWS[:1], model={"architecture": "alignn"})
    assert screen_title(one) == "1 structure screened with an ALIGNN model of formation energy per atom"
    assert screen_title(_doc(ROWS, model={}, format="traits")).endswith("with a model of formation energy per atom")


def test_first_paragraph_follows_the_numbers_and_calls_small_groups_weak():
    text = " ".join(screen_sentences(_doc(ROWS)))
    assert "Of the 6 structures screened, 2 (33 %) are flagged high" in text
    assert "95th percentile of the model's own ID test set" in text
    assert "Ce (2.3, 1 compound)" in text
    assert f"fewer than {FEW_COMPOUNDS} compounds" in text and "single observations" in text
    quiet = [_row(str(i), ["Mg", "O"], -2.8, 1.0, 1.0, "ok") for i in range(5)]
    text = " ".join(screen_sentences(_doc(quiet, calibrated=False)))
    assert "0 are flagged high" in text and "twice the screened set's median" in text
    assert "No element is marked check" in text and "single observations" not in text


@pytest.fixture(scope="module")
def screened(tmp_path_factory):
    """10 sample structures written as CIF files and screened with the quickstart checkpoint: HTML and PDF."""
    from pymatgen.core import Structure

    d = tmp_path_factory.mktemp("screen-report")
    (d / "in").mkdir()
    with gzip.open(sample_path(), "rt", encoding="utf-8") as fh:
        recs = [json.loads(next(fh)) for _ in range(10)]
    for r in recs:
        Structure.from_str(r["cif"], fmt="cif").to(filename=str(d / "in" / f"{r['material_id']}.cif"))
    res = screen(CKPT, [d / "in"], d / "out", formats=("html", "pdf"))
    assert res.n_screened == 10
    return res


def _section(html: str, sid: str) -> str:
    start = html.index(f'<section id="{sid}">')
    return html[start:html.index("</section>", start)]


def test_html_report_title_provenance_and_element_tables(screened):
    html = screened.files["html"].read_text(encoding="utf-8")
    h1 = re.search(r"<h1[^>]*>(.*?)</h1>", html, re.S).group(1)
    assert h1 == "10 structures screened with a CGCNN model of formation energy per atom"
    assert "model.safetensors" not in html[:html.index("<main>")]
    prov = _section(html, "provenance")
    assert "model.safetensors" in prov and "model.calibration.json" in prov and "compounds containing Fe" in prov
    assert "TRAITS audit report" not in re.sub(r"<style.*?</style>", "", html, flags=re.S)
    elements = _section(html, "elements")
    assert "Mean prediction (eV/atom)" in elements and "Flagged high" in elements and 'id="fig-elements"' in elements
    assert 'id="fig-distance"' in _section(html, "distance")
    for g in screened.document["by_element"]:
        assert f'<td class="name">{g["name"]}</td>' in elements
    assert "<script" not in html.lower()
    for uri in re.findall(r'src="data:image/svg\+xml;base64,([^"]+)"', html):
        assert "mathdefault" not in base64.b64decode(uri).decode("utf-8")


def test_pdf_report_fits_the_page_flows_and_says_screening(screened):
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(screened.files["pdf"].read_bytes()))
    pages = [" ".join(p.extract_text().split()) for p in reader.pages]
    assert all("TRAITS screening report" in p and "TRAITS audit report" not in p for p in pages)
    assert all(p.startswith("Screening of 10 structures with CGCNN") or "Screening of 10 structures" in p
               for p in pages)
    # page 1 flows on: the title, the paragraph and the figure of the first section share it
    assert "At a glance" in pages[0] and "Uncertainty against distance to training" in pages[0]
    assert "Each compound's last-layer Laplace standard deviation" in pages[0]
    placed = 0
    for page in reader.pages:
        width = float(page.mediabox.width)
        ops = []

        def visit(op, args, cm, tm, ops=ops):
            if op == b"Do":
                ops.append(list(cm))

        page.extract_text(visitor_operand_before=visit)
        for a, _b, _c, _d, e, _f in ops:
            placed += 1
            assert e >= 0 and e + a <= width + 0.5, (e, a, width)  # the image lies inside the page
    assert placed >= 2


def test_user_strings_are_escaped_in_the_report(tmp_path):
    evil = "<script>alert(1)</script>"
    rows = [dict(_row("x", ["Fe", "O"], -1.0, 2.5, 2.0, "high"), id=evil, formula=evil, source=evil + ".cif")]
    doc = _doc(rows, checkpoint=evil + ".safetensors", target=evil, unit=evil, model={"architecture": evil})
    doc["skipped"] = {evil: 1}
    files = render_screen_report(doc, tmp_path, ("html",))
    html = files["html"].read_text(encoding="utf-8")
    assert "<script" not in html.lower() and "&lt;script&gt;" in html
    assert np.isfinite(doc["by_element"][0]["mean_relative_uncertainty"])
