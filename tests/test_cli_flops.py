"""``nas flops`` as a user runs it: on a hand-written arch JSON and on a named architecture."""

import json

import pytest

from nas.cli import main

# Written the way a person writes one: 64x64 input, three stages, two head stages.
HAND_WRITTEN = """{
  "schema": "nas.arch/1",
  "name": "hand-made",
  "input_size": [64, 64],
  "num_joints": 5,
  "stem_width": 8,
  "stages": [
    {"width": 16, "layers": 2, "stride": 2},
    {"width": 24, "layers": 1, "stride": 2},
    {"width": 32, "layers": 1, "stride": 2}
  ],
  "head_stages": 2,
  "choices": {
    "stage1.block0": "mb_k3_e3",
    "stage1.block1": "skip",
    "stage2.block0": "mb_k5_e6",
    "stage3.block0": "mb_k7_e3",
    "head.up1": "up_plain_sic_c16",
    "head.up2": "up_dw_c8"
  }
}
"""


@pytest.fixture
def arch_file(tmp_path):
    path = tmp_path / "hand-made.json"
    path.write_text(HAND_WRITTEN)
    return path


def test_flops_prints_a_summary(arch_file, capsys):
    assert main(["flops", str(arch_file)]) == 0
    out = capsys.readouterr().out
    assert "hand-made at 64x64, 5 joints" in out
    assert "params" in out and "MACs" in out and "FLOPs" in out


def test_flops_json_is_one_object(arch_file, capsys):
    assert main(["flops", str(arch_file), "--json"]) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1
    data = json.loads(out)
    assert data["arch"] == "hand-made"
    assert data["input_size"] == [64, 64]
    assert data["params"] > 0 and data["macs"] > 0
    assert data["flops"] == 2 * data["macs"]


def _flops_json(capsys, *argv):
    assert main(["flops", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_input_override_scales_macs_not_params(arch_file, capsys):
    base = _flops_json(capsys, str(arch_file))
    big = _flops_json(capsys, str(arch_file), "--input", "128x64")
    assert big["input_size"] == [128, 64]
    assert big["params"] == base["params"]
    # a fully convolutional network: twice the pixels, twice the MACs
    assert big["macs"] == 2 * base["macs"]


def test_joints_override_changes_the_heatmap_conv_only(arch_file, capsys):
    base = _flops_json(capsys, str(arch_file))
    more = _flops_json(capsys, str(arch_file), "--joints", "6")
    # heatmap conv is 1x1 from 8 channels with bias: one more joint = 8 weights + 1 bias
    assert more["params"] - base["params"] == 8 + 1
    # and 8 MACs per heatmap pixel (16x16 heatmaps for a 64x64 input)
    assert more["macs"] - base["macs"] == 8 * 16 * 16


def test_named_architecture(capsys):
    data = _flops_json(capsys, "mobilenetv2", "--input", "64x64")
    assert data["arch"] == "mobilenetv2"
    assert data["params"] == 2_173_840


def _assert_one_line_error(capsys, argv, *words):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("nas: error: ")
    for word in words:
        assert word in lines[0]


def test_missing_file_is_one_line_error(tmp_path, capsys):
    _assert_one_line_error(capsys, ["flops", str(tmp_path / "nope.json")], "nope.json")


def test_non_json_file_is_one_line_error(tmp_path, capsys):
    path = tmp_path / "broken.json"
    path.write_text(HAND_WRITTEN[:100])
    _assert_one_line_error(capsys, ["flops", str(path)], "broken.json", "not valid JSON")


def test_invalid_choice_is_one_line_error_naming_the_label(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text(HAND_WRITTEN.replace('"stage2.block0": "mb_k5_e6"',
                                         '"stage2.block0": "skip"'))
    _assert_one_line_error(capsys, ["flops", str(path)], "bad.json", "stage2.block0")


def test_unknown_name_is_one_line_error(capsys):
    _assert_one_line_error(capsys, ["flops", "resnet50"], "resnet50")


def test_input_not_divisible_is_one_line_error(arch_file, capsys):
    _assert_one_line_error(capsys, ["flops", str(arch_file), "--input", "72x64"], "72x64")


def test_malformed_input_is_a_usage_error(arch_file, capsys):
    with pytest.raises(SystemExit) as info:
        main(["flops", str(arch_file), "--input", "64by64"])
    assert info.value.code == 2
    assert "64by64" in capsys.readouterr().err


@pytest.mark.parametrize("joints", ["0", "-3", "two"])
def test_non_positive_joints_is_a_usage_error(arch_file, capsys, joints):
    with pytest.raises(SystemExit) as info:
        main(["flops", str(arch_file), "--joints", joints])
    assert info.value.code == 2
    assert f"'{joints}': expected a positive integer" in capsys.readouterr().err
