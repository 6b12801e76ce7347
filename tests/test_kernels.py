"""traits.kernels: the CPU kernels a result records are the ones the libraries run with, pinned ones included."""
import json
import os
import platform
import subprocess
import sys

import pytest

from traits.kernels import KERNEL_VARIABLES, kernel_record


def _record_in_child(**env) -> dict:
    code = "import json, torch; from traits.kernels import kernel_record; print(json.dumps(kernel_record()))"
    clean = {k: v for k, v in os.environ.items() if k not in KERNEL_VARIABLES}
    done = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                          check=True, timeout=300)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_an_unpinned_process_records_no_pinning_variable():
    rec = kernel_record(environ={})
    assert "environment" not in rec and rec["torch_cpu"]
    assert kernel_record(environ={"OPENBLAS_CORETYPE": "Haswell", "HOME": "/x"})["environment"] == \
        {"OPENBLAS_CORETYPE": "Haswell"}


def test_pinned_kernels_are_the_ones_recorded():
    """A process started with PyTorch's generic kernels and (on x86-64) OpenBLAS's Haswell kernel says so: the
    record reads the libraries, not only the variables."""
    pinned = {"ATEN_CPU_CAPABILITY": "default"}
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    if x86:
        pinned["OPENBLAS_CORETYPE"] = "Haswell"
    rec = _record_in_child(**pinned)
    assert rec["torch_cpu"] == "DEFAULT" and rec["environment"] == pinned
    openblas = [b for b in rec.get("blas", []) if b.get("internal_api") == "openblas"]
    if not (x86 and openblas):
        pytest.skip("no OpenBLAS with selectable kernels here")
    assert openblas[0]["architecture"] == "Haswell"
    free = _record_in_child()
    assert free["torch_cpu"] != "DEFAULT" or platform.machine().lower() not in ("x86_64", "amd64")
