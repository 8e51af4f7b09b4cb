"""Model checkpoints and ``nas export``: round trips, the ONNX check, clean failures."""

import json
import pickle
import stat

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import nn

from nas.checkpoint import FORMAT, load_model_checkpoint, save_model_checkpoint
from nas.cli import main
from nas.export import FORMATS, export_model
from supernets.errors import NasError
from supernets.fileio import file_mode
from supernets.model import PoseNet
from supernets.space import get_space

HW = (64, 64)


def _tiny_space():
    return get_space("cpu-small", input_size=HW, num_joints=4)


def _spec(seed=0):
    return _tiny_space().sample(np.random.default_rng(seed), name=f"tiny-{seed}")


def _trained_like(spec, seed=0) -> PoseNet:
    """A PoseNet whose every weight and BN statistic is random (not the init values), so a
    checkpoint or export that drops any of them shows."""
    model = PoseNet(spec)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif t.dim() > 1:  # conv weights: keep the init's scale so activations stay tame
                t.copy_(torch.randn(t.shape, generator=g) * t.std().clamp_min(1e-3))
            else:
                t.copy_(0.1 * torch.randn(t.shape, generator=g) + (1.0 if "weight" in name
                                                                   else 0.0))
    return model.eval()


def _image(batch, seed=1):
    return torch.randn(batch, 3, *HW, generator=torch.Generator().manual_seed(seed))


def _files(directory):
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture(scope="module")
def spec():
    return _spec()


@pytest.fixture(scope="module")
def model(spec):
    return _trained_like(spec)


@pytest.fixture
def checkpoint(tmp_path, spec, model):
    path = tmp_path / "model.pt"
    save_model_checkpoint(path, spec, model, epoch=3, metrics={"pck": 0.81}, note=None)
    return path


# -- checkpoints -------------------------------------------------------------------------------

def test_checkpoint_round_trip(checkpoint, spec, model):
    loaded_spec, loaded, meta = load_model_checkpoint(checkpoint)
    assert loaded_spec == spec
    assert meta == {"epoch": 3, "metrics": {"pck": 0.81}, "note": None}
    assert not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with torch.no_grad():
        assert torch.equal(loaded(_image(2)), model(_image(2)))


def test_checkpoint_is_plain_data_under_weights_only(checkpoint):
    ckpt = torch.load(checkpoint, weights_only=True)
    assert ckpt["format"] == FORMAT == "nas.model/1"
    assert set(ckpt) == {"format", "arch", "state_dict", "meta"}
    assert ckpt["arch"]["schema"] == "nas.arch/1"


def test_checkpoint_loads_into_the_same_arch_at_another_input_size(checkpoint, spec, model):
    bigger = spec.with_input((128, 96))
    loaded_spec, loaded, _ = load_model_checkpoint(checkpoint, arch=bigger)
    assert loaded_spec == bigger
    x = torch.randn(1, 3, 128, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert loaded(x).shape == (1, 4, 32, 24)
        assert torch.equal(loaded(x), model(x))


def test_save_refuses_metadata_that_would_not_load_back(tmp_path, spec, model):
    with pytest.raises(TypeError, match="meta\\['lr'\\]"):
        save_model_checkpoint(tmp_path / "m.pt", spec, model, lr=np.float32(0.1))
    assert _files(tmp_path) == []


def test_save_refuses_a_model_of_another_arch(tmp_path, spec):
    with pytest.raises(ValueError, match="does not match arch"):
        save_model_checkpoint(tmp_path / "m.pt", spec, PoseNet(_spec(seed=5)))
    assert _files(tmp_path) == []


def _save_raw(path, obj):
    torch.save(obj, path)
    return path


def test_load_missing_file(tmp_path):
    with pytest.raises(NasError, match="nope.pt: no such checkpoint file"):
        load_model_checkpoint(tmp_path / "nope.pt")


def test_load_truncated_file(checkpoint):
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])
    with pytest.raises(NasError, match="model.pt: cannot read checkpoint, .*corrupt or truncated"):
        load_model_checkpoint(checkpoint)


def test_load_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(NasError, match="empty.pt: cannot read checkpoint"):
        load_model_checkpoint(path)


def test_load_random_bytes(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(NasError, match="junk.pt: not a nas.model/1 checkpoint"):
        load_model_checkpoint(path)


def test_load_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "pickled.pt"
    path.write_bytes(pickle.dumps({"format": FORMAT, "obj": nn.ReLU()}, protocol=2))
    with pytest.raises(NasError, match="pickled.pt: not a nas.model/1 checkpoint"):
        load_model_checkpoint(path)


def test_load_bare_state_dict(tmp_path, model):
    path = _save_raw(tmp_path / "sd.pt", model.state_dict())
    with pytest.raises(NasError, match="sd.pt: field 'format' = None.*bare state_dict"):
        load_model_checkpoint(path)


def test_load_wrong_format(tmp_path, spec, model):
    path = _save_raw(tmp_path / "other.pt", {"format": "other/2", "arch": spec.to_dict(),
                                              "state_dict": model.state_dict(), "meta": {}})
    with pytest.raises(NasError, match="other.pt: field 'format' = 'other/2'"):
        load_model_checkpoint(path)


def test_load_not_a_dict(tmp_path):
    path = _save_raw(tmp_path / "list.pt", [1, 2, 3])
    with pytest.raises(NasError, match="list.pt: not a nas.model/1 checkpoint .*list"):
        load_model_checkpoint(path)


def test_load_missing_field(tmp_path, spec):
    path = _save_raw(tmp_path / "m.pt", {"format": FORMAT, "arch": spec.to_dict(), "meta": {}})
    with pytest.raises(NasError, match="m.pt: missing field 'state_dict'"):
        load_model_checkpoint(path)


def test_load_invalid_arch(tmp_path, spec, model):
    arch = spec.to_dict()
    arch["choices"]["stage2.block0"] = "skip"
    path = _save_raw(tmp_path / "m.pt", {"format": FORMAT, "arch": arch,
                                          "state_dict": model.state_dict(), "meta": {}})
    with pytest.raises(NasError, match=r"m.pt: arch: choices\['stage2.block0'\]"):
        load_model_checkpoint(path)


def test_load_weights_missing_a_tensor(tmp_path, spec, model):
    state = dict(model.state_dict())
    del state["layers.0.0.0.weight"]
    path = _save_raw(tmp_path / "m.pt", {"format": FORMAT, "arch": spec.to_dict(),
                                          "state_dict": state, "meta": {}})
    with pytest.raises(NasError, match="m.pt: weights do not match .*'layers.0.0.0.weight'"):
        load_model_checkpoint(path)


def test_load_weights_of_another_arch(tmp_path, spec):
    other = _spec(seed=5)
    path = _save_raw(tmp_path / "m.pt", {"format": FORMAT, "arch": spec.to_dict(),
                                          "state_dict": PoseNet(other).state_dict(), "meta": {}})
    with pytest.raises(NasError, match="m.pt: weights do not match its arch"):
        load_model_checkpoint(path)


def test_load_into_a_different_arch_names_the_layer(checkpoint, spec):
    choices = dict(spec.choices)
    choices["stage2.block1"] = "mb_k7_e6" if choices["stage2.block1"] != "mb_k7_e6" else "skip"
    other = _tiny_space().spec(choices, name="other")
    with pytest.raises(NasError, match="model.pt: holds weights for arch 'tiny-0', not for "
                                       "'other': layer 'stage2.block1'"):
        load_model_checkpoint(checkpoint, arch=other)


# -- export_model ------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("fmt", FORMATS)
def test_export_round_trip(tmp_path, spec, model, fmt):
    out = tmp_path / f"net.{fmt}"
    report = export_model(spec, model, fmt, out)
    assert _files(tmp_path) == [out.name]  # no temporary or side files left
    assert report["format"] == fmt
    assert report["path"] == str(out)
    assert report["bytes"] == out.stat().st_size > 0
    assert stat.S_IMODE(out.stat().st_mode) == file_mode()  # as any new file, not mkstemp's 0600
    assert report["input_size"] == list(HW)
    check = report["check"]
    assert check["passed"] and check["max_abs_diff"] <= check["tolerance"] == 1e-4

    x = _image(3, seed=7)  # a batch size neither traced nor checked
    with torch.no_grad():
        expected = model(x).numpy()
    if fmt == "onnx":
        assert report["opset"] >= 17
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        (got,) = session.run(None, {"image": x.numpy()})
        meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
        assert json.loads(meta["nas.arch"]) == spec.to_dict()
    elif fmt == "torchscript":
        extra = {"nas.arch.json": ""}
        got = torch.jit.load(str(out), _extra_files=extra)(x).detach().numpy()
        assert json.loads(extra["nas.arch.json"]) == spec.to_dict()
    else:
        loaded_spec, loaded, _ = load_model_checkpoint(out)
        assert loaded_spec == spec
        with torch.no_grad():
            got = loaded(x).numpy()
    assert got.shape == (3, 4, 16, 16)
    assert np.abs(got - expected).max() <= 1e-4


def test_export_leaves_the_callers_model_alone(tmp_path, spec):
    model = _trained_like(spec).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_model(spec, model, "torchscript", tmp_path / "net.ts")
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_failed_check_writes_nothing(tmp_path, spec, model, monkeypatch):
    monkeypatch.setattr("nas.export.TOLERANCE", -1.0)  # no export can pass this
    out = tmp_path / "net.ts"
    with pytest.raises(NasError, match="net.ts: torchscript export check failed"):
        export_model(spec, model, "torchscript", out)
    assert _files(tmp_path) == []


def test_failed_check_keeps_an_existing_file(tmp_path, spec, model, monkeypatch):
    out = tmp_path / "net.ts"
    out.write_text("previous export")
    monkeypatch.setattr("nas.export.TOLERANCE", -1.0)
    with pytest.raises(NasError):
        export_model(spec, model, "torchscript", out)
    assert out.read_text() == "previous export"
    assert _files(tmp_path) == ["net.ts"]


def test_export_unknown_format(tmp_path, spec, model):
    with pytest.raises(NasError, match="format 'tflite'"):
        export_model(spec, model, "tflite", tmp_path / "net.tflite")
    assert _files(tmp_path) == []


# -- nas export --------------------------------------------------------------------------------

@pytest.fixture
def arch_json(tmp_path, spec):
    path = tmp_path / "arch.json"
    path.write_text(spec.to_json())
    return path


def _run_json(capsys, *argv):
    assert main(["export", *argv, "--json"]) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1
    return json.loads(out)


def test_cli_onnx_with_weights_and_input_override(tmp_path, arch_json, checkpoint, model,
                                                  capsys):
    out = tmp_path / "out" / "net.onnx"
    data = _run_json(capsys, str(arch_json), "--format", "onnx", "--weights", str(checkpoint),
                     "--out", str(out), "--input", "32x64")
    assert data["arch"] == "tiny-0" and data["weights"] == str(checkpoint)
    assert data["input_size"] == [32, 64]
    assert data["check"]["passed"] and data["check"]["max_abs_diff"] <= 1e-4
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 3, 32, 64, generator=torch.Generator().manual_seed(0))
    (got,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()  # the checkpoint's weights, not fresh ones
    assert np.abs(got - expected).max() <= 1e-4


def test_cli_text_output_and_fresh_weights_are_reproducible(tmp_path, arch_json, capsys):
    for name in ("a.pt", "b.pt"):
        assert main(["export", str(arch_json), "--format", "pytorch",
                     "--out", str(tmp_path / name)]) == 0
    text = capsys.readouterr().out
    assert "exported tiny-0 (64x64, 4 joints) as pytorch" in text
    assert "freshly initialised (seed 0)" in text
    a, b = (load_model_checkpoint(tmp_path / n)[1].state_dict() for n in ("a.pt", "b.pt"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_named_arch(tmp_path, capsys):
    data = _run_json(capsys, "mobilenetv2", "--format", "torchscript", "--input", "64x64",
                     "--out", str(tmp_path / "mbv2.ts"))
    assert data["arch"] == "mobilenetv2" and data["check"]["passed"]


def _assert_fails_cleanly(tmp_path, capsys, argv, *words):
    before = _files(tmp_path)
    assert main(["export", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("nas: error: ")
    for word in words:
        assert word in lines[0], lines[0]
    assert _files(tmp_path) == before  # no output, no temporary file


def test_cli_invalid_arch_json(tmp_path, spec, capsys):
    arch = spec.to_dict()
    arch["choices"]["head.up1"] = "up_plain_sic"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(arch))
    _assert_fails_cleanly(tmp_path, capsys,
                          [str(path), "--format", "onnx", "--out", str(tmp_path / "net.onnx")],
                          "bad.json", "head.up1")


def test_cli_arch_not_json(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text("schema: nas.arch/1\n")
    _assert_fails_cleanly(tmp_path, capsys,
                          [str(path), "--format", "onnx", "--out", str(tmp_path / "net.onnx")],
                          "bad.json", "not valid JSON")


def test_cli_corrupt_checkpoint(tmp_path, arch_json, checkpoint, capsys):
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[:1000])
    _assert_fails_cleanly(tmp_path, capsys,
                          [str(arch_json), "--format", "onnx", "--weights", str(checkpoint),
                           "--out", str(tmp_path / "net.onnx")],
                          "model.pt", "corrupt or truncated")


def test_cli_checkpoint_of_another_arch(tmp_path, arch_json, capsys):
    other = _spec(seed=5)
    ckpt = tmp_path / "other.pt"
    save_model_checkpoint(ckpt, other, PoseNet(other))
    _assert_fails_cleanly(tmp_path, capsys,
                          [str(arch_json), "--format", "torchscript", "--weights", str(ckpt),
                           "--out", str(tmp_path / "net.ts")],
                          "other.pt", "holds weights for arch 'tiny-5', not for 'tiny-0'")


def test_cli_missing_checkpoint(tmp_path, arch_json, capsys):
    _assert_fails_cleanly(tmp_path, capsys,
                          [str(arch_json), "--format", "pytorch", "--weights",
                           str(tmp_path / "nope.pt"), "--out", str(tmp_path / "net.pt")],
                          "nope.pt")


def test_cli_out_is_a_directory(tmp_path, arch_json, capsys):
    (tmp_path / "exports").mkdir()
    _assert_fails_cleanly(tmp_path, capsys,
                          [str(arch_json), "--format", "pytorch",
                           "--out", str(tmp_path / "exports")],
                          "exports", "is a directory")


def test_cli_out_in_a_folder_that_cannot_be_made(tmp_path, arch_json, capsys):
    _assert_fails_cleanly(tmp_path, capsys,
                          [str(arch_json), "--format", "onnx",
                           "--out", str(tmp_path / "arch.json" / "net.onnx")],
                          "arch.json", "is not a directory")


def test_cli_unknown_format_is_a_usage_error(tmp_path, arch_json, capsys):
    with pytest.raises(SystemExit) as info:
        main(["export", str(arch_json), "--format", "tflite", "--out", str(tmp_path / "n")])
    assert info.value.code == 2
    assert "tflite" in capsys.readouterr().err
