"""The model package's shape: the CGCNN adapters live apart from the networks, no import circle in traits.models,
and each adapter declares whether TRAITS trains it and which checkpoint formats it reads (readable without torch).
Function lengths are checked for the whole package by tests/test_function_length.py."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "traits" / "models"


def test_each_builtin_adapter_declares_training_formats_and_its_settings_field():
    from traits.models.base import BUILTIN_ADAPTERS, adapter_class
    from traits.models.checkpoint import FORMATS

    for name in BUILTIN_ADAPTERS:
        cls = adapter_class(name)
        graph = name in ("cgcnn", "cgcnn-original")
        assert cls.trainable is graph, name
        want = {"cgcnn": FORMATS[:2], "cgcnn-original": FORMATS}.get(name, ())
        assert cls.checkpoint_formats == want, name
        assert cls.options_field == ("hyper" if graph else "options"), name


def test_the_declarations_are_read_without_torch():
    code = ("import sys, json\nfrom traits.models.base import adapter_class\n"
            "c = adapter_class('cgcnn-original')\n"
            "print(json.dumps([c.trainable, list(c.checkpoint_formats), 'torch' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    trainable, formats, torch_loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert trainable and "cgcnn-original" in formats and not torch_loaded


def test_the_adapters_moved_out_of_the_network_files_under_their_old_names():
    from traits.models import cgcnn, cgcnn_adapter, cgcnn_original

    assert cgcnn.CGCNNAdapter is cgcnn_adapter.CGCNNAdapter
    assert cgcnn_original.CGCNNOriginalAdapter is cgcnn_adapter.CGCNNOriginalAdapter
    for network in ("cgcnn.py", "cgcnn_original.py"):
        tree = ast.parse((MODELS / network).read_text(encoding="utf-8"))
        classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
        assert not [c for c in classes if c.endswith("Adapter") or "Mixin" in c], (network, classes)
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "traits.models.base" not in imported and "traits.models.checkpoint" not in imported, network


def test_no_import_circle_in_traits_models():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("traits")
    modules = sorted(m for m in graph.modules if m.startswith("traits.models."))
    circles = [(a, b) for i, a in enumerate(modules) for b in modules[i + 1:]
               if graph.find_shortest_chain(a, b) and graph.find_shortest_chain(b, a)]
    assert not circles, circles

