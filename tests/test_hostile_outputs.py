"""Hostile outputs, locks, campaigns and results files (issue 31, items 6, 8, 10, 12 and 16): output paths that
are not regular files, oversized and unreadable locks, the campaign's exit contract and interrupted tasks,
malformed campaign.yaml, newer results files and the bundled CHGNet weights' hash."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
import yaml
from result_factory import make_result
from typer.testing import CliRunner

from traits.cli import app
from traits.errors import OutputError, TraitsError
from traits.files import write_formats_atomic, write_text_atomic
from traits.results import SCHEMA_VERSION, load_result

runner = CliRunner()


def _output(res) -> str:
    return " ".join(res.output.split())


def _is_fifo(path: Path) -> bool:
    return stat.S_ISFIFO(os.lstat(path).st_mode)


# ------------------------------------------------------------------------------------------ item 6: outputs


def test_an_output_path_that_is_a_fifo_or_a_directory_is_refused_and_left_alone(tmp_path):
    fifo = tmp_path / "out.xml"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match=r"out\.xml: the output path is a named pipe \(FIFO\), not a regular file"):
        write_text_atomic(fifo, "<x/>")
    assert _is_fifo(fifo)
    folder = tmp_path / "report.html"
    folder.mkdir()
    with pytest.raises(OutputError, match="report.html: the output path is a directory"):
        write_text_atomic(folder, "<html/>")
    assert folder.is_dir() and not list(tmp_path.glob(".*.tmp"))


def test_a_symlink_to_a_regular_file_is_written_through(tmp_path):
    target = tmp_path / "published" / "junit.xml"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "junit.xml"
    link.symlink_to(target)
    assert write_text_atomic(link, "new") == link
    assert link.is_symlink() and os.readlink(link) == str(target)  # the link stays a link
    assert target.read_text() == "new"
    assert not list(target.parent.glob(".*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_a_symlink_to_a_fifo_or_nowhere_is_refused(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "results.json"
    link.symlink_to(fifo)
    with pytest.raises(OutputError, match=r"results\.json: the output path is a symbolic link to a named pipe"):
        write_text_atomic(link, "{}")
    assert link.is_symlink() and _is_fifo(fifo)
    broken = tmp_path / "report.html"
    broken.symlink_to(tmp_path / "absent" / "x.html")
    with pytest.raises(OutputError, match="report.html: the output path is a broken symbolic link"):
        write_text_atomic(broken, "<html/>")
    assert broken.is_symlink() and not (tmp_path / "absent").exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="giving a link to another user needs root")
def test_another_users_symlink_in_a_sticky_shared_folder_is_not_followed(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    link = shared / "report.html"
    link.symlink_to(victim)
    os.lchown(link, 54321, 54321)
    with pytest.raises(OutputError, match="another user's symbolic link"):
        write_text_atomic(link, "<html/>")
    assert victim.read_text() == "keep"


def test_write_formats_checks_every_path_before_writing_any(tmp_path):
    os.mkfifo(tmp_path / "report.pdf")
    with pytest.raises(OutputError, match="report.pdf: the output path is a named pipe"):
        write_formats_atomic(tmp_path, "report", {"html": "<html/>", "pdf": b"%PDF"})
    assert not (tmp_path / "report.html").exists() and _is_fifo(tmp_path / "report.pdf")


def test_cli_gate_junit_to_a_fifo_exits_2_and_keeps_the_fifo(tmp_path):
    results = tmp_path / "results.json"
    make_result().write(results)
    fifo = tmp_path / "junit.xml"
    os.mkfifo(fifo)
    res = runner.invoke(app, ["gate", str(results), "--junit", str(fifo)])
    assert res.exit_code == 2, res.output
    assert "junit.xml: the output path is a named pipe (FIFO)" in _output(res)
    assert _is_fifo(fifo)


# ------------------------------------------------------------------------------------------ item 8: locks


def test_a_lock_with_a_very_long_purpose_stays_small_holds_and_is_released(tmp_path):
    from traits.outdir import LOCK, PURPOSE_LIMIT, acquire_lock

    lock = acquire_lock(tmp_path, purpose="report of " + "n" * 20000)
    try:
        assert (tmp_path / LOCK).stat().st_size < 2 * PURPOSE_LIMIT + 500
        with pytest.raises(OutputError, match=f"another TRAITS run.*pid {os.getpid()}"):
            acquire_lock(tmp_path, purpose="second")  # a live lock is never taken over
        assert json.loads((tmp_path / LOCK).read_text())["token"] == lock.info["token"]
    finally:
        lock.release()
    assert not (tmp_path / LOCK).exists()


@pytest.mark.parametrize("content", [b"x" * 20000, b"{not json", b'{"host": "h"}', b"[1, 2]",
                                     json.dumps({"pid": 1, "purpose": "p" * 70000}).encode()],
                         ids=["20000-bytes", "not-json", "no-pid", "not-a-mapping", "over-the-read-limit"])
def test_an_unreadable_lock_is_held_not_taken_over(tmp_path, content):
    from traits.outdir import LOCK, acquire_lock

    (tmp_path / LOCK).write_bytes(content)
    with pytest.raises(OutputError, match=r"cannot be read as a TRAITS lock.*If no such run exists, delete"):
        acquire_lock(tmp_path)
    assert (tmp_path / LOCK).read_bytes() == content


def test_a_lock_that_is_a_fifo_is_held_without_blocking(tmp_path):
    from traits.outdir import LOCK, acquire_lock

    os.mkfifo(tmp_path / LOCK)
    with pytest.raises(OutputError, match="cannot be read as a TRAITS lock"):
        acquire_lock(tmp_path)
    assert _is_fifo(tmp_path / LOCK)


def test_the_holder_removes_its_own_lock_whatever_it_holds_and_only_its_own(tmp_path):
    from traits.outdir import LOCK, acquire_lock

    lock = acquire_lock(tmp_path, purpose="audit")
    with open(tmp_path / LOCK, "r+b") as fh:  # the same file, its content damaged
        fh.write(b"\0" * 30000)
    lock.release()
    assert not (tmp_path / LOCK).exists()

    lock = acquire_lock(tmp_path, purpose="audit")
    (tmp_path / LOCK).unlink()  # removed by hand, then another run's lock took its place
    (tmp_path / LOCK).write_text(json.dumps({"pid": os.getpid(), "host": "h", "token": "another"}))
    lock.release()
    assert json.loads((tmp_path / LOCK).read_text())["token"] == "another"


def test_cli_report_with_a_20000_character_name_leaves_no_lock_and_a_live_lock_stops_it(tmp_path):
    from traits.outdir import LOCK, acquire_lock

    results = tmp_path / "results.json"
    make_result(name="n" * 20000).write(results)
    out = tmp_path / "out"
    res = runner.invoke(app, ["report", str(results), "--out", str(out), "--format", "html"])
    assert res.exit_code == 0, res.output
    assert (out / "report.html").is_file() and not (out / LOCK).exists()

    other = tmp_path / "other"
    with acquire_lock(other, purpose="report of " + repr("m" * 20000)):
        res = runner.invoke(app, ["report", str(results), "--out", str(other), "--format", "html"])
        assert res.exit_code == 2 and "another TRAITS run is writing into this folder" in _output(res)
        assert not (other / "report.html").exists()
    assert not (other / LOCK).exists()


# ------------------------------------------------------------------------------------------ items 10 and 12: campaigns


def _campaign(tmp_path: Path, fail_a: bool = False, report_a: bool = False) -> tuple[Path, Path]:
    """A campaign of two tasks (a, b) whose audits finished. Their gates warn only, except that with ``fail_a``
    task a fails its MAE-ratio gate; with ``report_a`` task a's spec asks for report.html, which was not
    written (the task was stopped while reporting)."""
    from traits.spec import load_spec
    from traits.verdict import apply_verdict

    directory, out = tmp_path / "campaign", tmp_path / "out"
    directory.mkdir(parents=True)
    for task in ("a", "b"):
        result = make_result(name=f"task-{task}")
        formats = ["json", "html"] if report_a and task == "a" else ["json"]
        raw = {**result.spec, "report": {"formats": formats}, "gates": {"fail_on": []}}
        if fail_a and task == "a":
            raw["gates"] = {"max_mae_ratio": 1e-6, "fail_on": ["mae_ratio"]}
        (directory / f"{task}.yaml").write_text(yaml.safe_dump(raw))
        spec = load_spec(directory / f"{task}.yaml", need_checkpoint=False)
        result.spec = spec.model_dump(mode="json")
        apply_verdict(result, spec.gates)
        where = out / f"seed-{spec.seed}" / task
        where.mkdir(parents=True)
        result.write(where / "results.json")
    (directory / "campaign.yaml").write_text(yaml.safe_dump({"profiles": {"none": {}}}))
    return directory, out


def _no_task(job, *a, **k):
    raise AssertionError(f"{job.task} ran again; its audit had finished")


def test_a_task_stopped_while_reporting_gets_its_report_on_resume(tmp_path):
    from traits.campaign import run_campaign

    directory, out = _campaign(tmp_path, report_a=True)
    logs: list[str] = []
    summary = run_campaign(directory, out, log=logs.append, task_fn=_no_task)
    assert len(summary["rows"]) == 2
    where = next(out.glob("seed-*/a"))
    assert "<html" in (where / "report.html").read_text() and not (where / ".traits.lock").exists()
    assert [m for m in logs if "rendered from the results.json" in m] == [
        f"{where}: its results.json was written but not its report.html (stopped while reporting); rendered from "
        "the results.json"]
    assert "&#34;" not in (out / "summary.html").read_text().split("</style>")[0]  # the style sheet as written
    logs.clear()
    run_campaign(directory, out, log=logs.append, task_fn=_no_task)
    assert not any("rendered" in m for m in logs)  # nothing left to finish


def test_campaign_exit_contract(tmp_path, monkeypatch):
    import traits.campaign as campaign

    directory, out = _campaign(tmp_path / "pass")
    res = runner.invoke(app, ["campaign", str(directory), "--out", str(out)])
    assert res.exit_code == 0, res.output

    directory, out = _campaign(tmp_path / "gate", fail_a=True)
    res = runner.invoke(app, ["campaign", str(directory), "--out", str(out)])
    assert res.exit_code == 1, res.output

    def crash(job, **_kw):
        raise TraitsError(f"{job.task}: boom")

    monkeypatch.setattr(campaign, "run_task", crash)
    next(out.glob("seed-*/b/results.json")).unlink()
    res = runner.invoke(app, ["campaign", str(directory), "--out", str(out)])
    assert res.exit_code == 3, res.output
    assert "Failed (left out of this summary): b (seed" in _output(res) and "b: boom" in _output(res)
    saved = json.loads((out / "summary.json").read_text())
    assert [f["task"] for f in saved["failed"]] == ["b"] and [r["task"] for r in saved["rows"]] == ["a"]

    next(out.glob("seed-*/a/results.json")).unlink()  # every task fails: still a summary, still 3
    res = runner.invoke(app, ["campaign", str(directory), "--out", str(out)])
    assert res.exit_code == 3, res.output
    assert json.loads((out / "summary.json").read_text())["rows"] == []


@pytest.mark.parametrize("settings, field", [
    ({"profiles": ["cpu", "full"]}, "profiles"),
    ({"profiles": "cpu"}, "profiles"),
    ({"profiles": {"none": ["data.subsample", 3]}}, "profiles.none"),
    ({"profiles": {"none": {1: 2}}}, "profiles.none"),
    ({"profiles": {3: {}, "none": {}}}, "profiles"),
    ({"profiles": {"none": {}}, "resources": {"default": 3}}, "resources.default"),
    ({"profiles": {"none": {}}, "resources": {"a": {"GPU": "one"}}}, "resources.a"),
], ids=["profiles-list", "profiles-string", "profile-list", "override-key-int", "profile-name-int",
        "resources-number", "resource-amount-string"])
def test_a_malformed_campaign_yaml_exits_2_naming_the_file_and_field(tmp_path, settings, field):
    directory, out = _campaign(tmp_path)
    (directory / "campaign.yaml").write_text(yaml.safe_dump(settings))
    for extra in ([], ["--profile", "none"]):
        res = runner.invoke(app, ["campaign", str(directory), "--out", str(out), *extra])
        assert res.exit_code == 2, res.output
        assert f"campaign.yaml: {field}:" in _output(res)


# ------------------------------------------------------------------------------------------ item 16: results, CHGNet


def test_a_newer_minor_results_file_is_read_ignoring_its_unknown_fields(tmp_path):
    path = tmp_path / "results.json"
    result = make_result()
    raw = json.loads(result.model_dump_json())
    raw["schema_version"] = "1.99"
    raw["energy_model"] = {"kind": "new"}
    raw["provenance"]["gpu_name"] = "H100"
    raw["accuracy"]["id"]["median_ae"] = 0.1
    path.write_text(json.dumps(raw))
    loaded = load_result(path)
    assert loaded.schema_version == SCHEMA_VERSION
    assert loaded.accuracy == result.accuracy and loaded.provenance == result.provenance

    raw["accuracy"]["id"]["n"] = "many"  # a known field of the wrong type is still refused, by its name
    path.write_text(json.dumps(raw))
    with pytest.raises(TraitsError, match="invalid results file at accuracy.id.n"):
        load_result(path)
    raw["accuracy"]["id"]["n"] = result.accuracy["id"].n
    raw["schema_version"] = SCHEMA_VERSION  # this version: an unknown field is a tampered file
    path.write_text(json.dumps(raw))
    with pytest.raises(TraitsError, match="invalid results file at"):
        load_result(path)


def test_the_bundled_chgnet_weights_are_recorded_with_their_sha256():
    pytest.importorskip("chgnet")
    import chgnet
    import torch

    from traits.models.base import get_adapter

    shipped = next((Path(chgnet.__file__).parent / "pretrained" / "0.3.0").glob("*.pth.tar"))
    adapter = get_adapter("chgnet")
    model = adapter.load(None, adapter.Options(), torch.device("cpu"))
    info = adapter.info(model, None, adapter.Options())
    assert info.weights_sha256 == hashlib.sha256(shipped.read_bytes()).hexdigest()
    assert info.weights == str(shipped) and info.weights_version == "0.3.0"


def test_campaign_summary_markdown_shows_task_names_as_text():
    """A task name (from a spec file name) with a line break, a workflow command or Markdown stays one literal cell."""
    from traits.campaign import summary_markdown

    hostile = "t\n::error title=forged::x ![i](http://127.0.0.1:8765/a.png) | <b>"
    summary = {"tasks": [{"task": hostile, "target": "band_gap", "omit": ["Fe"], "verdicts": ["pass"]}],
               "spearman_vs_mae_ratio": {}, "missing": [{"task": hostile, "seed": 0}],
               "failed": [{"task": hostile, "seed": 1, "error": "boom\n::error::x"}]}
    md = summary_markdown(summary)
    assert not any(line.startswith("::") for line in md.splitlines())
    row = next(line for line in md.splitlines() if "forged" in line)
    assert row.count(" | ") == 19  # 20 cells: the '|' of the name is escaped, not a new cell
    assert "](http" not in md.replace("\\](http", "") and "<b>" not in md


def test_a_results_file_with_a_megabyte_string_is_refused_before_a_report_is_made(tmp_path):
    """A 5 MB name made `report --format pdf` run for minutes: a text longer than any TRAITS writes is refused."""
    from traits.results import MAX_RESULT_STRING

    results = tmp_path / "results.json"
    make_result(name="n" * 5_000_000).write(results)
    res = runner.invoke(app, ["report", str(results), "--out", str(tmp_path / "out"), "--format", "pdf"])
    assert res.exit_code == 2 and "at name" in _output(res) and f"{MAX_RESULT_STRING:,}" in _output(res)
    assert not (tmp_path / "out" / "report.pdf").exists()
    make_result(name="n" * MAX_RESULT_STRING).write(results)
    assert load_result(results).name == "n" * MAX_RESULT_STRING
