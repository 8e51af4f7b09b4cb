"""Arch specs: JSON round trip, the layer walk, and one clear error per kind of bad input."""

import copy
import dataclasses
import json

import numpy as np
import pytest

from supernets.errors import NasError
from supernets.named import load_arch
from supernets.space import SPACES, get_space
from supernets.spec import SCHEMA, ArchSpec, parse_head_choice


def tiny_spec_dict() -> dict:
    """A spec as a person would write it: 32x32 input, output stride 16, two head stages."""
    return {
        "schema": "nas.arch/1",
        "name": "tiny",
        "input_size": [32, 32],
        "num_joints": 3,
        "stem_width": 8,
        "stages": [
            {"width": 8, "layers": 2, "stride": 2},
            {"width": 16, "layers": 2, "stride": 2},
            {"width": 24, "layers": 1, "stride": 2},
        ],
        "head_stages": 2,
        "choices": {
            "stage1.block0": "mb_k3_e3",
            "stage1.block1": "skip",
            "stage2.block0": "mb_k5_e6",
            "stage2.block1": "mb_k7_e3",
            "stage3.block0": "mb_k3_e6",
            "head.up1": "up_dw_sic_c16",
            "head.up2": "up_plain_c8",
        },
    }


def test_hand_written_spec_loads():
    spec = ArchSpec.from_dict(tiny_spec_dict())
    assert spec.name == "tiny"
    assert spec.space is None
    assert spec.skeleton.input_size == (32, 32)
    assert spec.skeleton.output_stride == 16
    assert spec.skeleton.heatmap_size == (8, 8)
    assert spec.choices["stage1.block1"] == "skip"


def test_json_round_trip_of_hand_written_spec(tmp_path):
    spec = ArchSpec.from_dict(tiny_spec_dict())
    assert spec.to_dict() == tiny_spec_dict()
    assert ArchSpec.from_json(spec.to_json()) == spec
    path = tmp_path / "tiny.json"
    spec.save(path)
    assert ArchSpec.load(path) == spec
    assert json.loads(path.read_text()) == tiny_spec_dict()


@pytest.mark.parametrize("space_name", list(SPACES))
def test_json_round_trip_of_sampled_specs(space_name):
    space = get_space(space_name)
    rng = np.random.default_rng(1)
    for _ in range(3):
        spec = space.sample(rng)
        back = ArchSpec.from_json(spec.to_json())
        assert back == spec
        assert back.space == space_name
        assert back.layers() == spec.layers()


def test_json_round_trip_of_mobilenetv2():
    spec = load_arch("mobilenetv2")
    assert ArchSpec.from_json(spec.to_json()) == spec


def test_choices_are_written_in_network_order():
    d = tiny_spec_dict()
    d["choices"] = dict(reversed(list(d["choices"].items())))
    spec = ArchSpec.from_dict(d)
    assert list(spec.to_dict()["choices"]) == list(tiny_spec_dict()["choices"])


def test_spec_is_immutable():
    spec = ArchSpec.from_dict(tiny_spec_dict())
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"
    with pytest.raises(TypeError):
        spec.choices["stage1.block0"] = "mb_k7_e6"


def test_layer_walk_derives_channels_strides_and_sizes():
    layers = ArchSpec.from_dict(tiny_spec_dict()).layers()
    table = [(lay.label, lay.op, lay.in_chs, lay.out_chs, lay.stride, lay.in_hw) for lay in layers]
    assert table == [
        ("stem", "stem", 3, 8, 2, (32, 32)),
        ("stage1.block0", "mb_k3_e3", 8, 8, 2, (16, 16)),
        ("stage1.block1", "skip", 8, 8, 1, (8, 8)),
        ("stage2.block0", "mb_k5_e6", 8, 16, 2, (8, 8)),
        ("stage2.block1", "mb_k7_e3", 16, 16, 1, (4, 4)),
        ("stage3.block0", "mb_k3_e6", 16, 24, 2, (4, 4)),
        ("head.up1", "up_dw_sic", 24, 16, 2, (2, 2)),
        ("head.up2", "up_plain", 16, 8, 2, (4, 4)),
        ("heatmap", "heatmap", 8, 3, 1, (8, 8)),
    ]


def test_with_input_changes_sizes_only():
    spec = ArchSpec.from_dict(tiny_spec_dict())
    bigger = spec.with_input((64, 48), num_joints=5)
    assert bigger.skeleton.input_size == (64, 48)
    assert bigger.skeleton.num_joints == 5
    assert bigger.choices == spec.choices
    assert bigger.skeleton.heatmap_size == (16, 12)


def test_parse_head_choice():
    assert parse_head_choice("up_dw_sic_c64") == ("up_dw_sic", 64)
    assert parse_head_choice("up_ir_e3_c32") == ("up_ir_e3", 32)


# -- validation: each bad input has its own case and the message names what is wrong ----------

def _set(path, value):
    """A mutation of the tiny spec dict: set d[path[0]][path[1]]... = value."""
    def mutate(d):
        target = d
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return mutate


def _delete(path):
    def mutate(d):
        target = d
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return mutate


BAD_SPECS = {
    # choices
    "unknown backbone op": (_set(["choices", "stage2.block1"], "mb_k9_e6"),
                            ["stage2.block1", "mb_k9_e6"]),
    "head op in backbone": (_set(["choices", "stage2.block1"], "up_plain"),
                            ["stage2.block1", "up_plain"]),
    "skip on block0": (_set(["choices", "stage2.block0"], "skip"), ["stage2.block0", "skip"]),
    "missing label": (_delete(["choices", "stage2.block1"]), ["stage2.block1"]),
    "more layers than choices": (_set(["stages", 1, "layers"], 3), ["stage2.block2"]),
    "fewer layers than choices": (_set(["stages", 1, "layers"], 1), ["stage2.block1"]),
    "fewer head stages than choices": (_set(["head_stages"], 1), ["head.up2"]),
    "unknown label": (_set(["choices", "stage9.block0"], "mb_k3_e3"), ["stage9.block0"]),
    "head choice without width": (_set(["choices", "head.up1"], "up_plain_sic"),
                                  ["head.up1", "up_plain_sic"]),
    "head choice with unknown op": (_set(["choices", "head.up1"], "up_bilinear_c64"),
                                    ["head.up1", "up_bilinear_c64"]),
    "head choice with zero width": (_set(["choices", "head.up2"], "up_plain_c0"),
                                    ["head.up2", "up_plain_c0"]),
    "backbone op in head": (_set(["choices", "head.up1"], "mb_k3_e3"), ["head.up1"]),
    "choice not a string": (_set(["choices", "stage1.block0"], 3), ["stage1.block0", "string"]),
    "choices not an object": (_set(["choices"], ["mb_k3_e3"]), ["choices"]),
    # schema and fields
    "wrong schema": (_set(["schema"], "nas.arch/2"), ["schema", "nas.arch/2"]),
    "missing schema": (_delete(["schema"]), ["schema"]),
    "unknown field": (_set(["width_mult"], 1.0), ["width_mult"]),
    "missing field": (_delete(["num_joints"]), ["num_joints"]),
    "missing name": (_delete(["name"]), ["name"]),
    "input_size as string": (_set(["input_size"], "32x32"), ["input_size", "32x32"]),
    "input_size with one number": (_set(["input_size"], [32]), ["input_size"]),
    "input_size not divisible": (_set(["input_size"], [40, 32]), ["input_size", "16"]),
    "num_joints as string": (_set(["num_joints"], "3"), ["num_joints"]),
    "num_joints as bool": (_set(["num_joints"], True), ["num_joints"]),
    "num_joints negative": (_set(["num_joints"], -1), ["num_joints"]),
    "stem_width zero": (_set(["stem_width"], 0), ["stem_width"]),
    "stem_width float": (_set(["stem_width"], 8.0), ["stem_width"]),
    "head_stages as string": (_set(["head_stages"], "2"), ["head_stages"]),
    "stages empty": (_set(["stages"], []), ["stages"]),
    "stages not a list": (_set(["stages"], {"width": 8}), ["stages"]),
    "stage stride 3": (_set(["stages", 0, "stride"], 3), ["stage1", "stride"]),
    "stage stride as bool": (_set(["stages", 0, "stride"], True), ["stage1", "stride"]),
    "stage stride as float": (_set(["stages", 0, "stride"], 2.0), ["stage1", "stride"]),
    "stage width as string": (_set(["stages", 2, "width"], "24"), ["stage3"]),
    "stage with extra key": (_set(["stages", 1, "kernel"], 3), ["stage2"]),
    "stage not an object": (_set(["stages", 0], [8, 2, 2]), ["stage1"]),
    "name not a string": (_set(["name"], 7), ["name"]),
    "space not a string": (_set(["space"], 7), ["space"]),
}


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_invalid_spec_is_a_nas_error_naming_the_culprit(case):
    mutate, must_mention = BAD_SPECS[case]
    d = copy.deepcopy(tiny_spec_dict())
    mutate(d)
    with pytest.raises(NasError) as info:
        ArchSpec.from_dict(d, where="arch.json")
    message = str(info.value)
    assert message.startswith("arch.json: ")
    assert "\n" not in message
    for word in must_mention:
        assert word in message, f"{word!r} not in {message!r}"


def test_not_json_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"schema": "nas.arch/1", "name": ')
    with pytest.raises(NasError, match=r"broken\.json: not valid JSON"):
        ArchSpec.load(path)


def test_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('{"schema": "nas.arch/1", "name": "caf\xe9"}'.encode("latin-1"))
    with pytest.raises(NasError, match=r"latin1\.json: not an arch spec, expected UTF-8 JSON "
                                       r"\(byte 0xe9 at offset 37 is not UTF-8\)"):
        ArchSpec.load(path)


def test_json_array_is_not_a_spec():
    with pytest.raises(NasError, match="expected a JSON object"):
        ArchSpec.from_json("[1, 2]")


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nowhere.json"
    with pytest.raises(NasError, match="nowhere.json: cannot read"):
        ArchSpec.load(path)


def test_schema_constant():
    assert SCHEMA == "nas.arch/1"


# -- named architectures and the spec loader --------------------------------------------------

def test_load_arch_accepts_a_path_or_a_name(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(tiny_spec_dict()))
    assert load_arch(path).name == "tiny"
    assert load_arch("mobilenetv2").name == "mobilenetv2"


def test_load_arch_applies_overrides():
    spec = load_arch("mobilenetv2", input_size=(128, 96), num_joints=14)
    assert spec.skeleton.input_size == (128, 96)
    assert spec.skeleton.num_joints == 14


def test_load_arch_unknown_name():
    with pytest.raises(NasError, match="resnet50: not an arch JSON file nor a named"):
        load_arch("resnet50")


def test_load_arch_bad_override_is_a_nas_error():
    with pytest.raises(NasError, match="divisible"):
        load_arch("mobilenetv2", input_size=(100, 100))


def test_spec_survives_pickle_and_deepcopy():
    """Worker processes and copy.deepcopy(model) both need this (a PoseNet holds its spec)."""
    import pickle

    from supernets.model import PoseNet

    spec = ArchSpec.from_dict(tiny_spec_dict())
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert copy.deepcopy(spec) == spec
    assert copy.deepcopy(PoseNet(spec)).spec == spec
