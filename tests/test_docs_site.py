"""The README and the documentation site: short README with the set-up commands, every command listed, a nav
whose pages exist, a spec reference covering every field, and the adapter sketch of the docs that actually runs.

``mkdocs build --strict`` and the example notebook run in ``.ci/run`` (they need the ``docs`` extra)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml
from typer.main import get_command
from typer.testing import CliRunner

from traits.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"

QUICKSTART_COMMAND = ("pip install torch==2.13.0 && pip install -e . && traits audit audits/quickstart.yaml "
                      "--out out/quickstart")
TEST_COMMAND = 'pip install torch==2.13.0 && pip install -e ".[dev]" && python -m pytest'


def _commands() -> list[str]:
    """Every command of the CLI, sub-commands as 'study generate'."""
    root = get_command(app)
    out = []
    for name, cmd in root.commands.items():
        sub = getattr(cmd, "commands", None)
        out.extend(f"{name} {s}" for s in sub) if sub else out.append(name)
    return out


def _nav_files(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [f for item in node for f in _nav_files(item)]
    if isinstance(node, dict):
        return [f for value in node.values() for f in _nav_files(value)]
    return []


def _mkdocs() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))


def _gen_module():
    spec = importlib.util.spec_from_file_location("gen_spec_reference", DOCS / "gen_spec_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_is_short_and_keeps_the_two_setup_commands():
    text = README.read_text(encoding="utf-8")
    assert len(text.encode("utf-8")) <= 15_000
    assert QUICKSTART_COMMAND in text and TEST_COMMAND in text


def test_readme_and_the_commands_page_list_every_command():
    commands = _commands()
    assert "audit" in commands and "study summary" in commands and "export-mace" in commands
    readme = README.read_text(encoding="utf-8")
    page = (DOCS / "commands.md").read_text(encoding="utf-8")
    for name in commands:
        assert f"`traits {name}" in readme, name
        assert f"`traits {name}" in page, name
    listed = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"}).output
    for name in {c.split()[0] for c in commands}:
        assert re.search(rf"\b{re.escape(name)}\b", listed), name


def test_every_page_of_the_nav_exists_and_readme_links_resolve():
    config = _mkdocs()
    generated = {_gen_module().PAGE}
    pages = _nav_files(config["nav"])
    assert "reading-a-report.md" in pages and "api/probes.md" in pages and "specs/reference.md" in pages
    for page in pages:
        assert page in generated or (DOCS / page).is_file(), page
    for target in re.findall(r"\]\(([^)#\s]+)[^)]*\)", README.read_text(encoding="utf-8")):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target


def test_site_dir_is_ignored_by_git():
    site = _mkdocs()["site_dir"].strip("/")
    ignored = (ROOT / ".gitignore").read_text(encoding="utf-8").split()
    assert f"/{site}/" in ignored or f"{site}/" in ignored


def test_spec_reference_lists_every_field_of_the_schema():
    from traits.spec import spec_json_schema

    schema = spec_json_schema()
    page = _gen_module().render(schema)
    for model in [schema, *schema["$defs"].values(), *schema["x-traits-model-options"].values()]:
        for field in model.get("properties", {}):
            assert f"| `{field}` |" in page, field
    for name in schema["$defs"]:
        assert f"## {name}\n" in page, name


def test_images_of_the_docs_exist_and_are_small():
    pages = [README, *DOCS.glob("*.md"), *DOCS.glob("*/*.md")]
    shown = set()
    for page in pages:
        for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            path = (page.parent / target).resolve()
            assert path.is_file(), (page.name, target)
            shown.add(path)
    assert any(p.name.startswith("report-") for p in shown)
    for path in (DOCS / "img").glob("*.png"):
        assert path.stat().st_size < 300_000, path.name


def test_the_adapter_sketch_of_the_docs_runs(tmp_path, monkeypatch):
    """The 'Writing your own adapter' example, executed as written: it loads weights, featurises and predicts."""
    from safetensors.torch import save_file

    from traits.data.sources import read_mp, sample_path
    from traits.errors import CheckpointError
    from traits.models.base import ModelAdapter

    text = (DOCS / "models" / "write-your-own.md").read_text(encoding="utf-8")
    code = next(block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "class FractionAdapter" in block)
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "adapter.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mypkg", raising=False)
    from mypkg.adapter import FractionAdapter, FractionNet  # noqa: PLC0415

    adapter = FractionAdapter()
    assert isinstance(adapter, ModelAdapter)
    torch.manual_seed(0)
    save_file(FractionNet(8).state_dict(), tmp_path / "fractions.safetensors")
    options = FractionAdapter.Options(hidden=8)
    model = adapter.load(tmp_path / "fractions.safetensors", options, torch.device("cpu"))
    entries = read_mp(sample_path(), "formation_energy_per_atom", kind="sample").entries[:5]
    items, skipped = adapter.featurise_entries(entries, options)
    ids, predictions, targets = adapter.predict(model, items, torch.device("cpu"))
    assert len(ids) == 5 and not skipped and predictions.shape == (5,)
    assert adapter.info(model, tmp_path / "fractions.safetensors", options).weights_sha256
    with pytest.raises(CheckpointError, match="missing-fractions"):
        adapter.load(tmp_path / "missing-fractions.safetensors", options, torch.device("cpu"))
