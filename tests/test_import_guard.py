"""`import traits` stops with a clear error when Enthought Traits (the PyPI distribution `traits`, also
imported as `traits`) shares the environment: mixed files in the package, or its distribution installed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import traits

ROOT = Path(__file__).resolve().parents[1]
ENTHOUGHT = {"Name": "traits", "Version": "7.3.0", "Summary": "Observable typed attributes for Python classes",
             "Author": "Enthought", "Author-email": "info@enthought.com"}
OURS = {"Name": "traits", "Version": "0.1.0",
        "Summary": "TRAITS, the Trusted AI Toolkit for Scientists: loss-landscape audits of materials ML models"}


def test_this_environment_has_no_conflict():
    assert traits._enthought_conflict() is None


def test_mixed_files_are_named(tmp_path):
    (tmp_path / "__init__.py").write_text("")
    assert traits._enthought_conflict(tmp_path, dists=[]) is None
    (tmp_path / "has_traits.py").write_text("")
    (tmp_path / "ctraits.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    message = traits._enthought_conflict(tmp_path, dists=[])
    assert "has_traits.py" in message and "ctraits" in message and "pip uninstall traits" in message
    assert "traits-audit" in message


def test_an_installed_enthought_distribution_is_named(tmp_path):
    assert traits._enthought_conflict(tmp_path, dists=[OURS]) is None  # this project under its old name
    message = traits._enthought_conflict(tmp_path, dists=[OURS, ENTHOUGHT])
    assert "Enthought Traits 7.3.0 is installed" in message and "virtual environment" in message


def test_import_fails_with_the_message_in_a_fresh_interpreter(tmp_path):
    """A dist-info of Enthought Traits ahead on sys.path: `import traits` raises ImportError naming it."""
    info = tmp_path / "traits-7.3.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("".join(f"{k}: {v}\n" for k, v in ENTHOUGHT.items()))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    res = subprocess.run([sys.executable, "-c", "import traits"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode != 0
    assert "ImportError" in res.stderr and "Enthought Traits 7.3.0 is installed" in res.stderr
