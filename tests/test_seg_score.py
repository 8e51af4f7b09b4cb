"""The latency-weighted score and the FLOPs guess, on the issue's worked examples."""

import math

import pytest

from nas.tasks.seg.score import flops_latency_ms, latency_weight, score


@pytest.mark.parametrize("t, w", [(1.0, 1.0), (3.0, 1.0), (6.5, 0.5), (10.0, 0.0), (12.0, 0.0)])
def test_weight_is_flat_then_linear_then_zero(t, w):
    assert latency_weight(t) == pytest.approx(w)


def test_the_issue_worked_examples():
    # DeepLabV3-ResNet101: 72.1 GFLOPs -> 4.69 ms, W 0.76, score 58.6 at 77.2 mIoU (VOC)
    t = flops_latency_ms(72.1)
    assert t == pytest.approx(4.69, abs=0.005)
    assert latency_weight(t) == pytest.approx(0.76, abs=0.005)
    # DeepLabV3-ResNet50: 51.4 GFLOPs -> 3.34 ms, 76.9 mIoU -> 73.1
    t = flops_latency_ms(51.4)
    assert t == pytest.approx(3.34, abs=0.005)
    assert score(76.9, t) == pytest.approx(73.1, abs=0.05)
    # the reference itself
    assert flops_latency_ms(140.6) == pytest.approx(9.1453)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_bad_latency_is_refused(bad):
    with pytest.raises(ValueError, match="expected a positive, finite number"):
        latency_weight(bad)
