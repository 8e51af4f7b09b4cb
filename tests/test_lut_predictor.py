"""Keys, predictions from rows, expected latency under probabilities, bounds (no timing)."""

import itertools

import numpy as np
import pytest
import torch

from lut import Calibration, LatencyPredictor, LatencyTable, row_key, space_rows
from lut.keys import parse_row_key
from supernets.errors import NasError
from supernets.space import SearchSpace, get_space
from supernets.spec import Skeleton, Stage


def tiny_space() -> SearchSpace:
    sk = Skeleton(input_size=(32, 32), num_joints=2, stem_width=8,
                  stages=(Stage(8, 2, 2), Stage(16, 2, 2)), head_stages=2)
    return SearchSpace("tiny", sk, backbone_ops=("mb_k3_e3", "mb_k5_e3", "skip"),
                       head_ops=("up_plain", "up_dw_sic"), head_widths=(8, 16))


def synthetic_table(space, calibration=Calibration(1.25, 0.5), seed=0, drop=()):
    """Random row latencies: exact predictions are checkable without timing anything."""
    rng = np.random.default_rng(seed)
    rows = {r.key: float(rng.uniform(0.01, 1.0)) for r in space_rows(space) if r.key not in drop}
    return LatencyTable.from_rows(space, rows, calibration=calibration)


def one_hot(space, spec):
    probs = {}
    for layer in space.choice_layers():
        p = torch.zeros(len(layer.candidates))
        p[layer.index(spec.choices[layer.label])] = 1.0
        probs[layer.label] = p
    return probs


def all_specs(space):
    layers = space.choice_layers()
    for combo in itertools.product(*(layer.names for layer in layers)):
        yield space.spec(dict(zip([layer.label for layer in layers], combo)))


def test_row_key_is_readable_and_round_trips():
    key = row_key("mb_k3_e6", 24, 32, 2, (32, 32))
    assert key == "mb_k3_e6|in24|out32|s2|32x32"
    row = parse_row_key(key)
    assert (row.op, row.in_chs, row.out_chs, row.stride, row.in_hw) == ("mb_k3_e6", 24, 32, 2,
                                                                        (32, 32))
    with pytest.raises(ValueError):
        parse_row_key("mb_k3_e6 in24")


def test_space_rows_are_distinct_and_skip_keeps_width():
    rows = space_rows(get_space("cpu-small"))
    keys = [r.key for r in rows]
    assert len(keys) == len(set(keys)) == 128
    assert all(r.in_chs == r.out_chs and r.stride == 1 for r in rows if r.op == "skip")
    # head stage 2 sees every width head stage 1 can choose
    assert {r.in_chs for r in rows if r.in_hw == (16, 16) and r.op.startswith("up_")} == {
        32, 64, 96}


def test_latency_is_calibrated_sum_of_rows():
    space = tiny_space()
    table = synthetic_table(space)
    predictor = LatencyPredictor(table)
    spec = space.sample(np.random.default_rng(3))
    total = sum(table.latency_ms(row_key(la.op, la.in_chs, la.out_chs, la.stride, la.in_hw))
                for la in spec.layers())
    assert predictor.raw_latency(spec) == pytest.approx(total, rel=1e-12)
    assert predictor.latency(spec) == pytest.approx(1.25 * total + 0.5, rel=1e-12)


def test_expected_latency_equals_latency_on_one_hot():
    space = tiny_space()
    predictor = LatencyPredictor(synthetic_table(space))
    rng = np.random.default_rng(0)
    for _ in range(10):
        spec = space.sample(rng)
        expected = predictor.expected_latency(space, one_hot(space, spec))
        assert expected.item() == predictor.latency(spec)  # exactly, not approximately


def test_expected_latency_is_the_mean_over_the_distribution_and_differentiable():
    space = tiny_space()
    predictor = LatencyPredictor(synthetic_table(space))
    logits = {la.label: torch.randn(len(la.candidates), generator=torch.Generator().manual_seed(i),
                                    requires_grad=True)
              for i, la in enumerate(space.choice_layers())}
    probs = {k: torch.softmax(v, 0) for k, v in logits.items()}
    expected = predictor.expected_latency(space, probs)
    expected.backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in logits.values())
    # brute force: sum over every architecture of P(arch) * latency(arch)
    brute = 0.0
    for spec in all_specs(space):
        p = 1.0
        for la in space.choice_layers():
            p *= float(probs[la.label].detach()[la.index(spec.choices[la.label])])
        brute += p * predictor.latency(spec)
    assert expected.item() == pytest.approx(brute, rel=1e-6)


def test_bounds_match_brute_force():
    space = tiny_space()
    predictor = LatencyPredictor(synthetic_table(space, seed=7))
    (fast, t_fast), (slow, t_slow) = predictor.bounds(space)
    latencies = [predictor.latency(s) for s in all_specs(space)]
    assert t_fast == pytest.approx(min(latencies), rel=1e-12)
    assert t_slow == pytest.approx(max(latencies), rel=1e-12)
    assert predictor.latency(fast) == t_fast and predictor.latency(slow) == t_slow


def test_missing_row_names_op_shape_and_command():
    space = tiny_space()
    spec = space.sample(np.random.default_rng(1))
    head = next(la for la in spec.layers() if la.label == "head.up2")
    missing = row_key(head.op, head.in_chs, head.out_chs, head.stride, head.in_hw)
    predictor = LatencyPredictor(synthetic_table(space, drop={missing}))
    with pytest.raises(NasError) as e:
        predictor.latency(spec)
    msg = str(e.value)
    assert missing in msg and "head.up2" in msg and "build_table" in msg
    assert f"input {head.in_hw[0]}x{head.in_hw[1]}" in msg and "\n" not in msg


def test_missing_row_of_shipped_space_gives_cli_command():
    space = get_space("cpu-small", input_size=(32, 32))
    spec = space.sample(np.random.default_rng(1))
    table = LatencyTable.from_rows(space, {})
    with pytest.raises(NasError, match=r"nas lut build --device cpu --space cpu-small "
                                       r"--input 32x32"):
        LatencyPredictor(table).latency(spec)


def test_uncalibrated_table_is_refused():
    space = tiny_space()
    with pytest.raises(NasError, match="no calibration"):
        LatencyPredictor(synthetic_table(space, calibration=None))
