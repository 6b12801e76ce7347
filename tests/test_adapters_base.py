"""The model-adapter seam: registry, entry points, missing extras, options, the torch adapter, label-free audits
through the Python API, and target/property mismatches."""

from __future__ import annotations

import math
from importlib import metadata as importlib_metadata

import pytest
import torch
from pydantic import ValidationError

from traits.errors import SpecError
from traits.models import base
from traits.models.base import Adapter, adapter_names, get_adapter, set_probe_parameters
from traits.spec import AuditSpec

CPU = torch.device("cpu")


def test_unknown_adapter_lists_the_installed_ones():
    names = "cgcnn, cgcnn-original, chgnet, sevenn, alignn, mace, torch"
    with pytest.raises(SpecError, match=f"installed adapters: {names}"):
        get_adapter("orb")
    with pytest.raises(ValidationError, match="unknown model adapter 'orb'"):
        AuditSpec.model_validate({"name": "x", "data": {"source": "sample", "target": "model"},
                                  "model": {"architecture": "orb", "checkpoint": "m.pt"}})


def test_missing_package_names_the_pip_install(monkeypatch):
    class Missing(Adapter):
        name, package, extra = "missing", "no_such_package_traits", "missing"

    with pytest.raises(SpecError, match=r"pip install 'traits-audit\[missing\]'"):
        Missing.require()


def test_entry_point_adapters_are_found(monkeypatch):
    ep = importlib_metadata.EntryPoint("mine", "traits.models.torch_module:TorchModuleAdapter", "traits.models")
    monkeypatch.setattr(base, "_entry_points", lambda: {"mine": ep})
    assert "mine" in adapter_names()
    assert get_adapter("mine").name == "torch"


def test_options_are_validated_by_the_adapter():
    with pytest.raises(ValidationError, match=r"model.options.version \(chgnet\)"):
        AuditSpec.model_validate({"name": "x", "data": {"source": "sample", "target": "model"},
                                  "model": {"architecture": "chgnet", "options": {"version": "9"}}})
    schemas = base.options_schemas()
    assert {"cgcnn", "chgnet", "sevenn", "torch"} <= set(schemas)


def test_property_target_mismatch_names_both():
    with pytest.raises(ValidationError, match="predicts energy_per_atom but data.target is formation_energy_per_atom"):
        AuditSpec.model_validate({"name": "x", "data": {"source": "sample", "target": "formation_energy_per_atom"},
                                  "model": {"architecture": "chgnet"}})


def test_probe_parameters_ignore_requires_grad():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    model[0].weight.requires_grad_(False)
    names = set_probe_parameters(model, [n for n, _ in model.named_parameters()])
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias"] and model[0].weight.requires_grad


def _cgcnn_file(tmp_path):
    from safetensors.torch import save_file

    from traits.models.cgcnn import CGCNN

    torch.manual_seed(0)
    net = CGCNN(atom_fea_len=8, n_conv=1, h_fea_len=8).eval()
    path = tmp_path / "net.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return net, path


def test_torch_adapter_loads_a_user_module_and_matches_its_forward(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAITS_ALLOW_CODE", "1")  # the spec's module is imported
    from adapter_checks import relative_error, sample_entries

    from traits.models.torch_module import TorchModuleOptions

    net, path = _cgcnn_file(tmp_path)
    adapter = get_adapter("torch")
    options = TorchModuleOptions(module="traits.models.cgcnn:CGCNN",
                                 kwargs={"atom_fea_len": 8, "n_conv": 1, "h_fea_len": 8},
                                 property="formation_energy_per_atom", units="eV/atom")
    model = adapter.load(path, options, CPU)
    items, skipped = adapter.featurise_entries(sample_entries(10), options)
    assert len(items) == 10 and not skipped
    ids, preds, _ = adapter.predict(model, items, CPU)
    with torch.no_grad():
        ref = net(adapter.collate(items, CPU, torch.float32)).numpy()
    assert relative_error(preds, ref) <= 1e-6
    info = adapter.info(model, path, options)
    assert info.property == "formation_energy_per_atom" and info.weights_sha256 and info.training_data is None


def test_torch_adapter_hvp_matches_finite_differences(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAITS_ALLOW_CODE", "1")  # the spec's module is imported
    from adapter_checks import hvp_vs_finite_differences, small_entries

    from traits.models.torch_module import TorchModuleOptions

    _, path = _cgcnn_file(tmp_path)
    adapter = get_adapter("torch")
    options = TorchModuleOptions(module="traits.models.cgcnn:CGCNN", kwargs={"atom_fea_len": 8, "n_conv": 1,
                                 "h_fea_len": 8, "batch_norm": False})
    from traits.models.cgcnn import CGCNN
    from traits.models.weights import load_state_file

    net = CGCNN(atom_fea_len=8, n_conv=1, h_fea_len=8, batch_norm=False)
    state = {k: v for k, v in load_state_file(path).items() if "bn" not in k and "num_batches" not in k}
    net.load_state_dict(state, strict=False)
    model = adapter.load(None, options, CPU, module=net)
    err, norm = hvp_vs_finite_differences(adapter, model, small_entries(3), options=options)
    assert norm > 0 and err < 1e-6


def test_weights_file_of_another_architecture_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAITS_ALLOW_CODE", "1")  # the spec's module is imported
    from traits.errors import CheckpointError
    from traits.models.torch_module import TorchModuleOptions

    _, path = _cgcnn_file(tmp_path)
    options = TorchModuleOptions(module="traits.models.cgcnn:CGCNN", kwargs={"atom_fea_len": 16})
    with pytest.raises(CheckpointError, match="do not fit"):
        get_adapter("torch").load(path, options, CPU)


def test_label_free_audit_of_an_in_memory_module_and_structures(tmp_path):
    from adapter_checks import sample_entries

    from traits import run_audit
    from traits.models.cgcnn import CGCNN

    torch.manual_seed(0)
    net = CGCNN(atom_fea_len=8, n_conv=1, h_fea_len=8)
    entries = sample_entries(60)
    structures = [(e.id, e.structure()) for e in entries]
    spec = AuditSpec.model_validate({
        "name": "in-memory", "seed": 0, "device": "cpu",
        "data": {"source": "sample", "target": "model"}, "omit": ["O"],
        "model": {"architecture": "cgcnn", "checkpoint": "unused.safetensors"},
        "probes": {"splits": ["id", "ood"], "hessian": {"top_k": 1, "max_steps": 8, "trace_hvps": 6,
                   "density_runs": 1, "density_steps": 4}, "surface": {"points_1d": 5, "points_2d": 5,
                   "directions_1d": 1}, "shift": {"enabled": False}},
        "report": {"formats": ["json"]},
    })
    result = run_audit(spec, tmp_path / "out", model=net, structures=structures, render=False)
    assert result.mode == "label-free" and not result.accuracy
    assert set(result.prediction_stats) >= {"id", "ood"} and result.prediction_stats["id"]["n"] > 0
    for split in ("id", "ood"):  # the Hessian at θ is the Gauss-Newton matrix: positive semi-definite
        assert result.hessian[split].top_eigenvalues[0] > 0
        assert result.metrics[split].robust_radius is None
    assert any(f.id == "training_data_unknown" and "may overlap training" in f.statement for f in result.findings)
    assert not any(f.id == "unseen_elements" for f in result.findings)
    assert math.isfinite(result.hessian["id"].top_eigenvalues[0])


def test_ase_files_are_read_as_entries(tmp_path):
    pytest.importorskip("ase")
    import ase.io
    from adapter_checks import sample_entries
    from ase.db import connect
    from pymatgen.io.ase import AseAtomsAdaptor

    from traits.data.sources import read_ase

    entries = sample_entries(3)
    frames = []
    for k, e in enumerate(entries):
        atoms = AseAtomsAdaptor.get_atoms(e.structure())
        atoms.info.update({"material_id": e.id, "energy_per_atom": -1.0 - k})
        frames.append(atoms)
    ase.io.write(tmp_path / "s.extxyz", frames, format="extxyz")
    got = read_ase(tmp_path / "s.extxyz", "energy_per_atom")
    assert [x.id for x in got.entries] == [e.id for e in entries]
    assert [x.target for x in got.entries] == [-1.0, -2.0, -3.0]
    assert len(got.entries[0].structure()) == len(entries[0].structure())
    with connect(tmp_path / "s.db") as db:
        for atoms in frames:
            db.write(atoms, material_id=atoms.info["material_id"])
    free = read_ase(tmp_path / "s.db", "model")
    assert len(free.entries) == 3 and all(math.isnan(x.target) for x in free.entries)


def test_public_probe_api_on_a_custom_module():
    import traits.probes as probes

    assert {"SplitObjective", "top_eigenvalues", "hutchpp_trace", "surface_1d"} <= set(probes.__all__)
    for name in probes.__all__:
        getattr(probes, name)

    class Batch:
        def __init__(self, x, y):
            self.x, self.y = x, y

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    wrapped = type("M", (torch.nn.Module,), {"__init__": lambda self: (torch.nn.Module.__init__(self),
                                                                       setattr(self, "net", model))[0],
                                             "forward": lambda self, b: self.net(b.x).squeeze(-1)})()
    x = torch.randn(16, 3)
    with torch.no_grad():
        batch = Batch(x, wrapped(Batch(x, None)))  # label-free: the model's own predictions
    obj = probes.SplitObjective(wrapped, [batch])
    eig = probes.top_eigenvalues(obj.hvp, obj.dim, k=2, max_steps=obj.dim, generator=torch.Generator().manual_seed(0),
                                 device=obj.device, dtype=obj.dtype)
    assert float(obj.loss()) == 0.0 and float(eig.values.min()) > -1e-6


@pytest.mark.parametrize("path", ["audits/chgnet/label-free.yaml", "audits/sevenn/label-free.yaml"])
def test_ready_label_free_specs_validate(path):
    from pathlib import Path

    from traits.spec import load_spec

    spec = load_spec(Path(__file__).resolve().parents[1] / path)
    assert spec.data.target == "model" and spec.data.sets is not None
    assert spec.data.sets.id.is_file() and spec.data.sets.ood.is_file()


def test_schema_exports_each_adapters_options():
    from traits.spec import spec_json_schema

    options = spec_json_schema()["x-traits-model-options"]
    assert "version" in options["chgnet"]["properties"] and "module" in options["torch"]["properties"]
