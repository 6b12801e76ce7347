"""Report layout and portability: the summary page first (and alone on page 1 of the PDF), no heading left
at the foot of a page, numbers that never break, readable domain-shift histograms, the eigenvector-plane
scale and caption, portable paths and host details, citations and the model card."""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from result_factory import make_result

import traits
from traits.report import figures as F
from traits.report import render as R
from traits.report import render_html
from traits.report.citation import bibtex, citations
from traits.report.formatting import fmt_interval, host_summary, portable_command, portable_path, portable_spec
from traits.report.headline import headlines, mae_value

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def result():
    return make_result()


@pytest.fixture(scope="module")
def html(result):
    return render_html(result)


def section(html: str, sid: str) -> str:
    start = html.index(f'<section id="{sid}">')
    return html[start:html.index("</section>", start)]


def test_summary_comes_first_with_headline_numbers_flags_and_one_figure(result, html):
    main = html[html.index("<main>"):]
    assert main.index('<section id="summary">') < main.index('<section id="verdict">')
    summary = section(html, "summary")
    assert "badge-fail" in summary and "Flagged" in summary
    assert summary.count("<img") == 1 and 'id="fig-ratios"' in summary
    mae = mae_value(result, "ood")
    assert mae.low < result.accuracy["ood"].mae < mae.high  # a bootstrap interval around the stored MAE
    assert R.fmt_num(result.accuracy["ood"].mae) in summary and fmt_interval(mae.low, mae.high) in summary
    assert "eV/atom" in summary and "(eV/atom)²" in summary and "α units" in summary
    failed = [f for f in result.findings if f.level == "fail"][:3]
    for f in failed:
        assert f.statement.replace("'", "&#39;") in summary
    # the headline rows name the quantities in reading order
    keys = [h.key for h in headlines(result)]
    assert keys[:2] == ["mae", "loss"] and "robust_radius" in keys


def test_sections_come_from_one_registry(html):
    ids = [s.id for s in R.SECTIONS]
    positions = [html.index(f'<section id="{sid}">') for sid in ids]
    assert positions == sorted(positions)
    toc = html[html.index('<nav class="toc">'):html.index("</nav>")]
    assert [s.heading for s in R.SECTIONS if s.numbered] == re.findall(r'<a href="#\w+">([^<]+)</a>', toc)
    for s in R.SECTIONS:
        assert (ROOT / "templates" / s.template).is_file()
        assert all(name in R.FIGURES for name in s.figures)


def test_print_css_keeps_headings_with_what_follows_and_numbers_whole():
    css = (ROOT / "templates" / "report.css").read_text()
    assert re.search(r"h1, h2, h3 \{[^}]*break-after: avoid", css)
    assert re.search(r"h2 \+ p, h3 \+ p,[^{]*h3 \+ figure \{[^}]*break-before: avoid", css)
    assert re.search(r"figure\.figure \{[^}]*break-inside: avoid", css)
    assert re.search(r"\.n, \.num, \.ci \{[^}]*white-space: nowrap", css)
    assert re.search(r"section#summary \{ break-after: page; \}", css)
    narrow = (ROOT / "templates" / "report-narrow.css").read_text()
    assert re.search(r"table\.data \{ display: block; overflow-x: auto", narrow)
    assert '<style media="screen and (max-width: 700px)">' in render_html(make_result(n_id=10, n_ood=10))
    # table cells no longer break anywhere (that split numbers mid-digit on phones); hashes and paths still do
    cell = re.search(r"table\.data th, table\.data td \{([^}]*)\}", css).group(1)
    assert "overflow-wrap: anywhere" not in cell


@pytest.fixture(scope="module")
def pdf_pages(result):
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(R.render_pdf(result, dpi=60)))
    return [page.extract_text() for page in reader.pages]


def test_pdf_page_one_is_the_summary_and_no_heading_ends_a_page(pdf_pages):
    first = " ".join(pdf_pages[0].split())
    assert "Summary" in first and "Flagged" in first and "mean absolute error" in first
    assert "1. Verdict Overall status" not in first  # the sections start on page 2
    assert "1. Verdict" in " ".join(pdf_pages[1].split())
    headings = {f"{n}. {s.heading}" for n, s in enumerate([s for s in R.SECTIONS if s.numbered], 1)}
    for number, text in enumerate(pdf_pages, 1):
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("page ")]
        assert lines, number
        assert lines[-1] not in headings, f"page {number} ends with the heading {lines[-1]!r}"


def test_domain_shift_histograms_are_large_with_readable_text():
    rng = np.random.default_rng(0)
    targets = {s: rng.normal(0, 1, 200).tolist() for s in ("train", "id", "ood")}
    distances = {space: {s: rng.gamma(2, 1, 200).tolist() for s in ("train", "id", "ood")}
                 for space in ("composition", "embedding")}
    with F.style():
        fig = F.shift_figure(targets, distances, "eV/atom", "formation_energy_per_atom", 5, band=(-2, 2))
        width, height = fig.get_size_inches()
        visible = [ax for ax in fig.axes if ax.get_visible()]
        assert len(visible) == 3 and height >= 5.5 and width == pytest.approx(F.PAGE_WIDTH)
        for ax in visible:
            assert ax.xaxis.label.get_fontsize() >= 8.5
            assert min(t.get_fontsize() for t in ax.get_xticklabels()) >= 8
        fig.clear()


def _with_plane(lambda_min: float):
    base = make_result()
    surf = base.surface.model_copy(deep=True)
    surf.plane = {"lambda_max": 120.0, "lambda_min": lambda_min, "converged_max": True, "converged_min": True,
                  "residual_max": 1e-4, "residual_min": 1e-3}
    a = np.array(surf.alphas_2d)
    grid = lambda l0, c: (l0 * (1 + 1e6 * c * a[:, None] ** 2 + 0.3 * a[None, :] ** 2)).tolist()  # noqa: E731
    surf.plane_grids = {"id": grid(0.0068, 1.0), "ood": grid(0.091, 3.0)}
    return make_result(surface=surf)


def test_eigenvector_plane_scale_and_caption_follow_the_data():
    pos = render_html(_with_plane(0.002))
    cap = section(pos, "surfaces")
    assert 'id="fig-plane_2d"' in cap
    assert "negative-curvature" not in cap and "θ is a minimum in this plane" in cap
    neg = section(render_html(_with_plane(-0.4)), "surfaces")
    assert "negative-curvature β axis" in neg and "saddle" in neg
    # the colour coordinate shows both a 30 % rise and ten orders of magnitude on one scale
    lo, mid, hi = F.plane_colour([0.0, math.log10(1.3), 10.0])
    assert lo == 0 and 0.04 < mid < 0.1 and hi == pytest.approx(math.log10(11))
    scale = F.plane_scale(_with_plane(0.002).surface.plane_grids, {"id": 0.0068, "ood": 0.091})
    ticks, labels = F._plane_ticks(scale)
    assert ticks == sorted(ticks) and "1" in labels and "10" in labels


def test_reports_show_no_absolute_paths_or_host_details_outside_the_appendix(result, html):
    assert "/models/quickstart" not in html
    assert "model.safetensors" in section(html, "provenance")
    assert result.provenance.platform not in html  # the full platform string (kernel, libc) is never shown
    assert "Linux, x86_64" in section(html, "appendix")
    body = html.replace(section(html, "appendix"), "")
    assert "Linux, x86_64" not in body and "glibc" not in html
    spec = section(html, "appendix")
    assert "checkpoint: model.safetensors" in spec


def test_the_appendix_names_the_cpu_kernels_and_escapes_them(result):
    """The kernels decide which neighbours a tied crystal graph keeps: the appendix lists them (pinning variables
    included), escaped, and says nothing for a result written before they were recorded."""
    r = result.model_copy(deep=True)
    r.provenance.kernels = {"blas": [{"internal_api": "openblas", "version": "0.3.31", "architecture": "Haswell"}],
                            "numpy_simd": ["X86_V3"], "torch_cpu": "AVX512",
                            "environment": {"OPENBLAS_CORETYPE": "<b>Haswell</b>"}}
    appendix = section(render_html(r), "appendix")
    assert "OpenBLAS 0.3.31 (Haswell) · NumPy SIMD X86_V3 · PyTorch AVX512" in appendix
    assert "pinned: OPENBLAS_CORETYPE=&lt;b&gt;Haswell&lt;/b&gt;" in appendix and "<b>Haswell" not in appendix
    r.provenance.kernels = {}
    assert "CPU kernels" not in section(render_html(r), "appendix")


def test_portable_paths_commands_and_host():
    assert portable_path("/home/me/project/runs/model.safetensors", "/home/me/project/audits/a.yaml") == \
        "model.safetensors"
    assert portable_path("/home/me/project/audits/ckpt/model.safetensors", "/home/me/project/audits/a.yaml") == \
        "ckpt/model.safetensors"
    assert portable_path("runs/model.safetensors", "") == "runs/model.safetensors"
    assert portable_path("C:\\Users\\me\\model.pt") == "model.pt"
    assert portable_command("traits audit /home/me/a.yaml --out=/tmp/x --junit out.xml") == \
        "traits audit a.yaml --out=x --junit out.xml"
    assert portable_spec({"model": {"checkpoint": "/abs/m.pt", "hyper": {"n": 1}}, "omit": ["/x/y"]}) == \
        {"model": {"checkpoint": "m.pt", "hyper": {"n": 1}}, "omit": ["y"]}
    assert host_summary("Linux-6.18.44-fc-v1045-x86_64-with-glibc2.36") == "Linux, x86_64"
    assert host_summary("macOS-14.4-arm64-arm-64bit") == "macOS, arm64"
    assert host_summary("") == ""


def test_intervals_format_open_ends():
    assert fmt_interval(1.0, 2.0) == "[1, 2]"
    assert fmt_interval(0.5, None) == "[0.5, ∞)"
    assert fmt_interval(None, None) == ""


def test_how_to_cite_lists_the_methods_and_data_used(result, html):
    keys = [r.key for r in citations(result)]
    for key in ("traits_toolkit", "li2018visualizing", "lanczos1950iteration", "meyer2021hutchpp",
                "hutchinson1989stochastic", "ghorbani2019investigation", "xie2018crystal", "jain2013materials",
                "sanyal2018mtcgcnn"):
        assert key in keys, key
    block = bibtex(citations(result))
    assert block.count("@") == len(keys) and "@software{traits_toolkit," in block
    cite = section(html, "cite")
    assert "<pre class=\"bibtex\">" in cite and "10.1063/1.4812323" in cite
    perov = make_result()
    perov.spec["data"] = {**perov.spec["data"], "source": "csv", "path": "perov5/perovskites.csv"}
    perov.provenance.data_source = "perovskites.csv"
    assert "castelli2012new" in [r.key for r in citations(perov)]
    bare = make_result(hessian={}, surface=None)
    assert "lanczos1950iteration" not in [r.key for r in citations(bare)]


def test_citation_cff_matches_the_package():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert str(cff["version"]) == traits.__version__ and cff["title"].startswith("TRAITS")
    dois = {r.get("doi") for r in cff["references"]}
    assert {"10.1137/1.9781611976496.16", "10.1063/1.4812323", "10.1103/PhysRevLett.120.145301",
            "10.1039/C2EE22341D"} <= dois


def test_model_card_fields_are_rendered_and_optional():
    from traits.spec import AuditSpec

    spec = make_result().spec
    spec["card"] = {"intended_use": "screening <b>oxides</b>", "training_data": "MP sample, CC BY 4.0",
                    "licence": "MIT"}
    AuditSpec.model_validate(spec)  # the spec model accepts the card
    html = render_html(make_result(spec=spec))
    prov = section(html, "provenance")
    assert "Model card" in prov and "MP sample, CC BY 4.0" in prov and "MIT" in prov
    assert "screening &lt;b&gt;oxides&lt;/b&gt;" in section(html, "summary")
    with pytest.raises(Exception, match="extra"):
        AuditSpec.model_validate({**spec, "card": {"licence": "MIT", "colour": "red"}})
    assert "Model card" not in render_html(make_result())
