"""Segmentation heads in the op factory, specs, the space, the supernet and the latency tables."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from lut import LatencyTable, TimingConfig, space_rows
from lut.build import build
from lut.keys import parse_row_key, spec_rows
from lut.predictor import LatencyPredictor
from lut.table import COLUMNS
from supernets.errors import NasError
from supernets.flops import complexity, op_macs
from supernets.model import PoseNet
from supernets.named import load_arch
from supernets.ops import HEAD_OPS, build_op, op_kind, parse_seg_head, seg_head_name
from supernets.space import SearchSpace, get_space, seg_heads, space_names
from supernets.spec import ArchSpec, Skeleton, Stage
from supernets.supernet import SuperNet

FAST = TimingConfig(rounds=3, warmup_calls=1, retries=0)


def tiny_seg_space(heads=("seg_tc1_up_dw_sic_w8", "seg_tc2_up_plain_w8", "seg_lraspp_w8",
                          "seg_aspp_w8")) -> SearchSpace:
    sk = Skeleton(input_size=(32, 48), num_joints=5, stem_width=8,
                  stages=(Stage(8, 1, 2), Stage(16, 2, 2), Stage(24, 1, 2)), task="seg")
    return SearchSpace("tiny-seg", sk, backbone_ops=("mb_k3_e3", "skip"), seg_heads=heads)


@pytest.mark.parametrize("name", ["seg_tc1_up_plain_w16", "seg_tc2_up_ir_e3_sic_w32",
                                  "seg_lraspp_w16", "seg_aspp_w24"])
def test_every_seg_head_gives_class_scores_at_the_input_size(name):
    head = build_op(name, 24, 5, 16, low_chs=16).eval()
    x, low = torch.randn(2, 24, 4, 6), torch.randn(2, 16, 8, 12)
    assert head(x, low).shape == (2, 5, 64, 96)
    assert op_kind(name) == "seghead"


def test_seg_head_names_round_trip_and_bad_names_are_refused():
    for kind, up in [("tc1", "up_dw"), ("tc2", "up_ir_e3_sic"), ("lraspp", None), ("aspp", None)]:
        assert parse_seg_head(seg_head_name(kind, 64, up)) == (kind, 64, up)
    for bad in ["seg_tc3_up_dw_w8", "seg_tc1_up_nope_w8", "seg_lraspp", "seg_aspp_w0"]:
        with pytest.raises(ValueError, match="not a segmentation head"):
            parse_seg_head(bad)
    with pytest.raises(ValueError, match="low-level feature"):
        build_op("seg_lraspp_w8", 24, 5, 16)
    with pytest.raises(ValueError, match="power of 2"):
        build_op("seg_tc1_up_dw_w8", 24, 5, 6)


def test_the_seg_space_offers_42_heads_fed_by_the_stage_at_twice_the_resolution():
    space = get_space("seg-small")
    head = space.layers()[-1]
    assert head.kind == "seghead" and len(head.candidates) == 42 == len(seg_heads())
    assert (head.low_from, head.low_chs, head.low_hw, head.in_hw) == \
        ("stage2.block2", 32, (22, 30), (11, 15))
    assert {parse_seg_head(c.name)[2] for c in head.candidates} - {None} == set(HEAD_OPS)
    assert get_space("seg-small", preset="cityscapes").skeleton.num_classes == 19
    with pytest.raises(NasError, match="unknown preset 'lsp' for space seg-small"):
        get_space("seg-small", preset="lsp")


def test_seg_mbv2_contains_the_segmentation_baseline_and_seg_a_does_not():
    baseline = load_arch("mobilenetv2-lraspp")
    space = get_space("seg-mbv2", preset="camvid")
    space.check(baseline)
    assert [(s.width, s.layers) for s in space.skeleton.stages] == \
        [(24, 2), (32, 3), (64, 4), (96, 3), (160, 3), (320, 1)]
    layers = space.choice_layers()
    # six first blocks change width or stride (no skip), ten may be skipped; 56 heads
    assert sorted(len(layer.candidates) for layer in layers[:-1]) == [6] * 6 + [7] * 10
    assert len(layers[-1].candidates) == 56 and layers[-1].low_chs == 32
    with pytest.raises(NasError, match="skeleton of space 'seg-a'"):
        get_space("seg-a", preset="camvid").check(baseline)
    assert set(space_names("seg")) == {"seg-small", "seg-a", "seg-mbv2"}
    assert "seg-mbv2" not in space_names("pose")


def test_seg_spec_round_trips_through_json_and_bad_fields_name_themselves(tmp_path):
    space = tiny_seg_space()
    spec = space.sample(np.random.default_rng(0), "s")
    d = spec.to_dict()
    assert d["task"] == "seg" and d["num_classes"] == 5
    assert "num_joints" not in d and "head_stages" not in d
    assert ArchSpec.from_json(spec.to_json()) == spec
    bad = dict(d, num_joints=5)
    with pytest.raises(NasError, match="unknown field 'num_joints' for task seg"):
        ArchSpec.from_dict(bad)
    bad = dict(d, choices={**d["choices"], "head": "seg_fancy_w8"})
    with pytest.raises(NasError, match=r"choices\['head'\].*not a segmentation head"):
        ArchSpec.from_dict(bad)
    with pytest.raises(NasError, match="field 'task' = 'depth'"):
        ArchSpec.from_dict(dict(d, task="depth"))
    pose = get_space("cpu-base").sample(np.random.default_rng(0)).to_dict()
    assert "task" not in pose                       # pose files read and write as before
    assert ArchSpec.from_dict(dict(pose, task="pose")) == ArchSpec.from_dict(pose)


def test_standalone_network_is_the_supernets_path_with_its_weights():
    space = tiny_seg_space()
    supernet = SuperNet(space).eval()
    x = torch.randn(2, 3, 32, 48)
    heads = set()
    for seed in range(12):
        spec = space.sample(np.random.default_rng(seed))
        heads.add(spec.choices["head"])
        model = supernet.standalone(spec).eval()
        with torch.no_grad():
            a, b = model(x), supernet(x, supernet.fixed_mixes(spec))
        assert a.shape == (2, 5, 32, 48)
        torch.testing.assert_close(a, b)
    assert len(heads) >= 3


def test_a_mixed_head_layer_takes_gradients_for_every_candidate():
    space = tiny_seg_space()
    supernet = SuperNet(space)
    n = len(space.layers()[-1].candidates)
    alpha = torch.zeros(n, requires_grad=True)
    probs = alpha.softmax(0)
    mixes = {layer.label: ((0, 1.0),) for layer in space.choice_layers()}
    mixes["head"] = [(i, probs[i]) for i in range(n)]
    out = supernet(torch.randn(2, 3, 32, 48), mixes)
    out.square().mean().backward()
    assert torch.all(alpha.grad != 0)


def test_row_keys_carry_the_low_level_feature_and_parse_back():
    space = tiny_seg_space()
    rows = [r for r in space_rows(space) if r.low_chs]
    assert len(rows) == 4
    assert rows[0].key.endswith("|low16@4x6")
    assert all(parse_row_key(r.key) == r for r in rows)
    spec = space.sample(np.random.default_rng(1))
    assert [row for _, row in spec_rows(spec)][-1].low_chs == 16
    with pytest.raises(ValueError, match="low<C>@<H>x<W>"):
        parse_row_key("seg_aspp_w8|in24|out5|s16|4x6|low16")


def test_macs_count_the_low_level_branch():
    # LR-ASPP at width 8 on a 24x4x6 feature and a 16x8x12 low-level one: the 1x1 branch, the
    # gate's 1x1 conv on the pooled map, the low-level 1x1 projection and the classifier
    branch, gate, low, classifier = 24 * 8 * 24, 24 * 8, 16 * 8 * 96, 8 * 5 * 96
    assert op_macs("seg_lraspp_w8", 24, 5, 16, (4, 6), 16, (8, 12)) == \
        branch + gate + low + classifier
    spec = tiny_seg_space().sample(np.random.default_rng(2))
    assert complexity(spec).macs > 0


def test_a_seg_table_builds_stores_and_predicts_and_pose_tables_keep_their_columns(tmp_path):
    space = tiny_seg_space()
    out = tmp_path / "seg.parquet"
    build(space, "cpu", out=out, timing=FAST, progress=False, calibration_networks=3)
    table = LatencyTable.load(out)
    assert table.space == space
    stored = pq.read_table(out).to_pandas()
    assert list(stored.columns) == COLUMNS + ["low_chs", "low_h", "low_w"]
    assert set(stored.loc[stored["op"].str.startswith("seg_"), "low_chs"]) == {16}
    assert set(stored.loc[~stored["op"].str.startswith("seg_"), "low_chs"]) == {0}
    predictor = LatencyPredictor(table)
    spec = space.sample(np.random.default_rng(3))
    assert predictor.latency(spec) > 0
    meta = json.loads(pq.read_schema(out).metadata[b"nas.lut"])
    assert meta["space"]["task"] == "seg" and len(meta["space"]["seg_heads"]) == 4

    pose = SearchSpace("tiny", Skeleton(input_size=(32, 32), num_joints=2, stem_width=8,
                                        stages=(Stage(8, 1, 2), Stage(16, 1, 2))),
                       backbone_ops=("mb_k3_e3",), head_ops=("up_plain",), head_widths=(8,))
    build(pose, "cpu", out=tmp_path / "pose.parquet", timing=FAST, progress=False,
          calibration_networks=2)
    assert list(pq.read_table(tmp_path / "pose.parquet").to_pandas().columns) == COLUMNS
    meta = json.loads(pq.read_schema(tmp_path / "pose.parquet").metadata[b"nas.lut"])
    assert "task" not in meta["space"]


def test_a_standalone_seg_network_exports_and_counts():
    spec = tiny_seg_space().sample(np.random.default_rng(4))
    model = PoseNet(spec).eval()
    assert model.taps == [(len(model.labels) - 3, len(model.labels) - 1)]
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 48)).shape == (1, 5, 32, 48)


def test_seg_rows_export_with_their_low_level_input_and_chain_through_the_tap():
    from lut import ort

    space = tiny_seg_space()
    rng = np.random.default_rng(5)
    for seed in range(4):
        spec = space.sample(np.random.default_rng(seed), "n")
        rows = [row for _, row in spec_rows(spec)]
        ops = ort.op_models(rows)
        net = ort.network_model(spec)
        assert [i.name for i in net.graph.input] == ["image"]
        x = rng.standard_normal((2, 3, 32, 48)).astype(np.float32)
        (y,) = ort.session(net, "CPUExecutionProvider", 1).run(None, {"image": x})
        # by hand: row after row, the head fed the tapped layer's output as ``low``
        h, outs = x, []
        layers = spec.layers()
        for layer, row in zip(layers, rows, strict=True):
            sess = ort.session(ops[row.key], "CPUExecutionProvider", 1)
            feeds = {"x": h}
            if layer.low_from is not None and "low" in [i.name for i in sess.get_inputs()]:
                feeds["low"] = outs[[lay.label for lay in layers].index(layer.low_from)]
            (h,) = sess.run(None, feeds)
            outs.append(h)
        assert y.shape == (2, 5, 32, 48) and np.allclose(y, h, atol=1e-5)


def test_a_seg_table_builds_in_onnx_runtime(tmp_path):
    from lut.runtimes import Runtime

    space = tiny_seg_space(heads=("seg_tc1_up_dw_w8", "seg_aspp_w8"))
    out = tmp_path / "seg-ort.parquet"
    build(space, "cpu", out=out, timing=FAST, progress=False, calibration_networks=2,
          runtime=Runtime("onnxruntime", "CPUExecutionProvider"))
    table = LatencyTable.load(out)
    assert table.runtime.name == "onnxruntime"
    assert all(table.latency_ms(r.key) > 0 for r in space_rows(space))


def test_the_named_seg_baseline_is_mobilenetv2_with_lraspp_at_output_stride_8():
    from supernets.named import load_arch

    spec = load_arch("mobilenetv2-lraspp")
    assert spec.skeleton.task == "seg" and spec.skeleton.input_size == (176, 240)
    head = spec.layers()[-1]
    assert (head.op, head.low_from, head.low_chs, head.low_hw) == \
        ("seg_lraspp_w128", "stage2.block2", 32, (22, 30))
    small = load_arch("mobilenetv2-lraspp", input_size=(64, 96))
    with torch.no_grad():
        assert PoseNet(small).eval()(torch.randn(1, 3, 64, 96)).shape == (1, 11, 64, 96)
