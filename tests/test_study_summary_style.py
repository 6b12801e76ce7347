"""The study summary's page: the audit report's style and running header, the conclusion (generated from the
numbers, weak results called weak) and the contents before any table, overview rows that link to their rows in the
full tables, no row that is only dashes without saying why, and the committed summary's numbers unchanged."""

from __future__ import annotations

import copy
import io
import json
import re
from pathlib import Path

import pytest

from traits import catalogue as cat
from traits.report.render import templates_dir
from traits.study.summary import (
    _ci,
    _summary_sections,
    conclusion,
    measured,
    reading,
    sections_html,
    summary_markdown,
    write_study_summary,
)

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "docs" / "study" / "summary.json"


@pytest.fixture(scope="module")
def summary() -> dict:
    return json.loads(COMMITTED.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def written(summary, tmp_path_factory):
    return write_study_summary(summary, tmp_path_factory.mktemp("study-summary"), pdf=True)


@pytest.fixture(scope="module")
def html(written) -> str:
    return written["html"].read_text(encoding="utf-8")


def test_the_page_uses_the_audit_reports_style_and_no_script(html):
    report_css = (templates_dir() / "report.css").read_text(encoding="utf-8")
    assert report_css.strip().splitlines()[0] in html  # the audit report's stylesheet, as written
    assert 'class="data' in html and '<header class="title">' in html and 'class="kicker"' in html
    assert "<script" not in html.lower()
    assert not re.findall(r"""\b(?:src|href)\s*=\s*["']?(?:https?:|//)""", html)


def test_conclusion_and_contents_come_before_any_table(html):
    main = html[html.index("<main>"):]
    first_table = main.index("<table")
    assert main.index('<section id="conclusion">') < main.index('id="contents"') < first_table
    conc = main[main.index('<section id="conclusion">'):main.index("</section>")]
    text = " ".join(re.sub(r"<[^>]+>", " ", conc).split())
    # sample sizes, intervals, and a weak result called weak
    assert "168 audits of 56 tasks (28 held-out rules" in text
    assert "ρ = 0.95 [0.89, 0.98]" in text and "λ_max (partial ρ 0.39 [0.01, 0.60])" in text
    assert "but weakly: the lower bounds are 0.01 and 0.08" in text


def test_every_link_points_at_a_section_or_row_of_the_page(html):
    links = re.findall(r'<a href="([^"]*)"', html)
    ids = set(re.findall(r'\bid="([^"]+)"', html))
    assert links and all(link.startswith("#") and link[1:] in ids for link in links), \
        [link for link in links if link[1:] not in ids]
    toc = html[html.index('id="contents"'):]
    toc = toc[:toc.index("</nav>")]
    for section in ("overview", "metrics", "baseline", "families", "tasks", "forest", "scatter"):
        assert f'href="#{section}"' in toc, section


def test_overview_rows_link_to_their_rows_with_the_same_numbers(summary, html):
    labels = cat.labels()
    overview = html[html.index('<section id="overview">'):]
    overview = overview[:overview.index("</section>")]
    measured_keys = [k for k, v in summary["statistics"]["overall"].items() if measured(v)]
    assert measured_keys
    for key in measured_keys:
        v = summary["statistics"]["overall"][key]
        assert f'<a href="#metric-{key}">{labels.get(key, key)}' in overview, key
        row = re.search(rf'<tr id="metric-{key}">(.*?)</tr>', html, re.S)
        assert row, key
        cells = re.findall(r"<td>(.*?)</td>", row.group(1), re.S)
        assert cells[1].startswith(labels.get(key, key)) and cells[2] == _ci(v), (key, cells)
        assert _ci(v) in overview and reading(v) in overview
    for key in summary["statistics"]["vs_best_baseline"]["metrics"]:
        if f'href="#baseline-{key}"' in overview:
            assert f'<tr id="baseline-{key}">' in html


def test_no_table_row_is_only_dashes_without_saying_why(html):
    for row in re.findall(r"<tr\b[^>]*>(.*?)</tr>", html, re.S):
        cells = [" ".join(re.sub(r"<[^>]+>", "", c).split()) for c in re.findall(r"<td\b[^>]*>(.*?)</td>", row, re.S)]
        if len(cells) < 2:
            continue
        rest = cells[1:]
        empty = [c for c in rest if c in ("–", "-", "—", "0 / 0", "0 / 0 / 0", "")]
        assert len(empty) < len(rest) - 1 or any("not measured" in c for c in cells), cells


@pytest.mark.parametrize("where", ["docs/study", "docs/study/v2/labelled"])
def test_the_committed_summary_renders_with_its_numbers_unchanged(where):
    summary = json.loads((ROOT / where / "summary.json").read_text(encoding="utf-8"))
    md = summary_markdown(summary)
    committed = (ROOT / where / "summary.md").read_text(encoding="utf-8")
    assert md == committed  # re-rendered from summary.json: the committed page is this code's output
    # every row of the first table carries the numbers of summary.json
    for key, v in summary["statistics"]["overall"].items():
        if measured(v):
            assert re.search(rf"\| {re.escape(_ci(v))} \|", md), key


def test_conclusion_follows_the_numbers(summary):
    weak = copy.deepcopy(summary)
    overall = weak["statistics"]["overall"]
    for key in overall:
        part = (overall[key].get("partial") or {}).get("loss")
        if part and part.get("low") is not None:
            part.update(low=-0.2)  # no metric keeps anything beyond the loss at θ
    text = conclusion(weak)
    assert "No metric tracks the error beyond the loss at θ" in text and "weakly" not in text
    few = copy.deepcopy(summary)
    for v in few["statistics"]["overall"].values():
        if v.get("n_clusters"):
            v["n_clusters"] = 6
    few["pipeline_check"] = True
    text = conclusion(few)
    assert text.startswith("This is a pipeline check") and "With only 6 held-out rules" in text
    assert "first jump scale were not measured" in conclusion(summary)


def test_headings_get_ids_and_tables_the_report_class(summary):
    body, contents = sections_html("\n".join(_summary_sections(summary)) + "\n", {"metrics": ["m-a", "m-b"]})
    assert [sid for sid, _ in contents][:4] == ["metrics", "baseline", "gates", "families"]
    assert '<h2 id="metrics">' in body and '<table class="data wide">' in body and '<table class="data">' in body
    assert body.count('<tr id="m-') == 2


def test_user_strings_are_escaped_on_the_page(summary, tmp_path):
    evil = copy.deepcopy(summary)
    evil["data_set"] = "<script>alert(1)</script>"
    evil["families"] = {"<b>x</b>": {"tasks": 1, "audits": 1}}
    html = write_study_summary(evil, tmp_path, pdf=False)["html"].read_text(encoding="utf-8")
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<b>x</b>" not in html


def test_pdf_says_study_summary_in_its_running_header(written):
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(written["pdf"].read_bytes()))
    pages = [" ".join(p.extract_text().split()) for p in reader.pages]
    assert all("TRAITS study summary" in p and "TRAITS audit report" not in p for p in pages)
    assert float(reader.pages[0].mediabox.width) > float(reader.pages[0].mediabox.height)  # landscape
    first = pages[0]
    assert first.index("Conclusion") < first.index("Contents")


def test_the_default_gates_section_states_the_rule_and_each_decision(summary):
    """The section names, per gated metric, whether it fails by default and which conditions it misses; making
    one task's λ_max gate fire on all three seeds (the only condition λ_max misses on study-1's numbers under
    today's rule) flips its row to a fail, and the closing sentence follows."""
    from traits.study.summary import gate_decisions

    rows = {r["metric"]: r for r in gate_decisions(summary)}
    lam = rows["lambda_ratio"]
    assert not lam["fails_by_default"] and lam["reasons"] == ["its gate fires on all three seeds of no task"]
    md = summary_markdown(summary)
    assert "fail by default on the MAE ratio, the non-finite share and no landscape or distance metric" in md
    stable = copy.deepcopy(summary)
    task = next(r["task"] for r in stable["rows"] if r.get("family") == "element")
    for r in stable["rows"]:
        if r["task"] == task:
            r["lambda_ratio"] = 10.0
    rows = {r["metric"]: r for r in gate_decisions(stable)}
    assert rows["lambda_ratio"]["fails_by_default"] and rows["lambda_ratio"]["evidence"].seed_firing[2] == 1
    assert "| fails |" in summary_markdown(stable).split("## Default gates")[1].split("##")[0]
    assert "the non-finite share and λ_max" in summary_markdown(stable)
    # a radius ρ in the wrong direction names that condition
    assert "its ρ interval reaches 0 or lies on the wrong side" in rows["radius_ratio"]["reasons"]


def test_a_label_free_signal_the_audits_did_not_probe_says_so():
    """A summary of labelled audits (study v2's second pass) names why its label-free rows are empty."""
    from traits.study.summary import not_measured

    lab = json.loads((ROOT / "docs" / "study" / "v2" / "labelled" / "summary.json").read_text(encoding="utf-8"))
    why = dict(not_measured(lab))
    assert "no audit ran the label-free probes" in why["gn_lambda_ratio"]
    assert "label-free" not in why.get("loss_grad_norm_ratio", "")
