"""Hostile output folders (hostile report F4, F5): a named pipe, a device or a symbolic link where TRAITS reads
or removes its own artefacts (the folder's marker, results.json, a report, a campaign task's split manifest)
is refused with exit 2 naming it; it is never read (a read would block) and never removed (--overwrite)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
from result_factory import make_result

from traits.campaign import _split_scheme_of
from traits.errors import OutputError
from traits.outdir import MARKER, folder_owner, remove_artefacts

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")

CLI = "import sys; from traits.cli import app; sys.argv[0] = 'traits'; app()"


def _traits(*args, timeout: int = 60) -> subprocess.CompletedProcess:
    """The CLI in a subprocess, so that a read that blocks fails the test (TimeoutExpired) instead of hanging."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-c", CLI, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _text(res: subprocess.CompletedProcess) -> str:
    return " ".join((res.stdout + res.stderr).split())


def _is_fifo(path: Path) -> bool:
    return stat.S_ISFIFO(os.lstat(path).st_mode)


@contextmanager
def _unblocked(fifo: Path, after: float = 30.0):
    """Guard an in-process read of ``fifo``: when the block has not ended ``after`` seconds in, open the pipe for
    writing and close it, so a reader blocked on it gets end-of-file and the test fails instead of hanging."""
    done = threading.Event()

    def guard():
        if not done.wait(after):
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass

    thread = threading.Thread(target=guard, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


@pytest.fixture(scope="module")
def results_file(tmp_path_factory) -> Path:
    return make_result().write(tmp_path_factory.mktemp("r") / "results.json")


@pytest.mark.parametrize("name", ["results.json", MARKER])
@pytest.mark.parametrize("overwrite", [False, True])
def test_report_into_a_folder_whose_results_or_marker_is_a_fifo_exits_2(tmp_path, results_file, name, overwrite):
    out = tmp_path / "o"
    out.mkdir()
    os.mkfifo(out / name)
    res = _traits("report", results_file, "--out", out, "--format", "html", *(["--overwrite"] if overwrite else []))
    assert res.returncode == 2, _text(res)
    assert name in _text(res) and "named pipe" in _text(res), _text(res)
    assert _is_fifo(out / name) and not (out / "report.html").exists()


def test_a_results_json_linked_to_a_device_is_refused_not_read(tmp_path, results_file):
    out = tmp_path / "o"
    out.mkdir()
    (out / "results.json").symlink_to("/dev/zero")
    res = _traits("report", results_file, "--out", out, "--format", "html")
    assert res.returncode == 2 and "character device" in _text(res) and "results.json" in _text(res), _text(res)
    assert (out / "results.json").is_symlink()


def test_overwrite_refuses_a_fifo_report_and_removes_nothing(tmp_path, results_file):
    out = tmp_path / "o"
    out.mkdir()
    other = make_result(name="another").write(out / "results.json")
    os.mkfifo(out / "report.html")
    res = _traits("report", results_file, "--out", out, "--format", "html", "--overwrite")
    assert res.returncode == 2, _text(res)
    assert "report.html" in _text(res) and "named pipe" in _text(res) and "--overwrite" in _text(res), _text(res)
    assert _is_fifo(out / "report.html")
    assert other.is_file()  # nothing removed: the check comes before any removal


def test_overwrite_refuses_symlinks_and_a_directory_where_a_file_belongs(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    kept = tmp_path / "published.pdf"
    kept.write_text("keep me")
    (out / "report.pdf").symlink_to(kept)
    with pytest.raises(OutputError, match=r"report\.pdf: --overwrite removes only .* a symbolic link"):
        remove_artefacts(out)
    assert (out / "report.pdf").is_symlink() and kept.read_text() == "keep me"
    (out / "report.pdf").unlink()
    (out / "report.pdf").mkdir()
    (out / "report.pdf" / "mine.txt").write_text("x")
    with pytest.raises(OutputError, match=r"report\.pdf: .* is a directory"):
        remove_artefacts(out)
    assert (out / "report.pdf" / "mine.txt").is_file()


def test_overwrite_still_removes_what_an_audit_writes(tmp_path):
    out = tmp_path / "o"
    (out / "model").mkdir(parents=True)
    (out / "model" / "model.safetensors").write_bytes(b"x")
    for name in ("results.json", "report.html", MARKER):
        (out / name).write_text("{}")
    (out / "notes.txt").write_text("mine")
    assert sorted(remove_artefacts(out)) == sorted(["results.json", "report.html", MARKER, "model"])
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_campaign_task_folder_reads_refuse_fifos(tmp_path):
    task = tmp_path / "seed-0" / "t1"
    (task / "model").mkdir(parents=True)
    os.mkfifo(task / "model" / "split_manifest.json")
    with _unblocked(task / "model" / "split_manifest.json"), pytest.raises(
            OutputError, match=r"split_manifest\.json: the split manifest is a named pipe"):
        _split_scheme_of(task / "model" / "split_manifest.json")
    os.mkfifo(task / "results.json")
    with _unblocked(task / "results.json"), pytest.raises(
            OutputError, match=r"results\.json: the results file is a named pipe"):
        folder_owner(task)
    assert _is_fifo(task / "results.json")
    assert _split_scheme_of(task / "missing.json") is None
