"""The latency-weighted segmentation score, and the FLOPs guess of latency it replaces.

    Score = mIoU * W(T),   W(T) = max(0, 1 - max(0, T - 3 ms) / 7 ms)

Full marks at T <= 3 ms, falling linearly to 0 at 10 ms. The usual practice fills T from GFLOPs,
scaled from a reference model whose latency is assumed: DDRNet-39 at 140.6 GFLOPs taken as
9.1453 ms, so a model of G GFLOPs "runs" in 9.1453 * G / 140.6 ms (DeepLabV3-ResNet101, 72.1
GFLOPs: 4.69 ms, W 0.76; DeepLabV3-ResNet50, 51.4 GFLOPs: 3.34 ms). ``nas`` measures T on the
device instead; ``flops_latency_ms`` is kept so that a report can show how far the guess is off.
"""

from __future__ import annotations

import math

__all__ = ["FLOPS_REFERENCE", "FULL_MARKS_MS", "SCORE_FLOOR", "ZERO_MS", "flops_latency_ms",
           "latency_weight", "log_weight_cost", "score"]

FULL_MARKS_MS = 3.0   # W = 1 at or below
ZERO_MS = 10.0        # W = 0 at or above
# the reference of the FLOPs guess: (name, GFLOPs, assumed latency in ms)
FLOPS_REFERENCE = ("DDRNet-39", 140.6, 9.1453)


def _check_ms(t_ms: float) -> float:
    t = float(t_ms)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"latency {t_ms!r} ms: expected a positive, finite number")
    return t


def latency_weight(t_ms: float) -> float:
    """W(T): 1 up to 3 ms, linear to 0 at 10 ms, 0 beyond."""
    t = _check_ms(t_ms)
    return max(0.0, 1.0 - max(0.0, t - FULL_MARKS_MS) / (ZERO_MS - FULL_MARKS_MS))


# below this W the search's cost -log W(T) continues as its tangent line (see log_weight_cost)
SCORE_FLOOR = 0.05


def log_weight_cost(t_ms, floor: float = SCORE_FLOOR):
    """-log W(T) for a search that maximises log(mIoU) + log W(T) (``--objective score``),
    differentiable in ``t_ms`` (a tensor of milliseconds) everywhere but at 3 ms.

    The flat parts of W: at T <= 3 ms the cost is 0 and has no gradient, on purpose, since the
    score gains nothing from a faster network there and the task term alone moves the search.
    At T >= 10 ms W is 0 and -log W infinite; so from W = ``floor`` on (T = 10 - 7 x floor ms)
    the cost continues as the tangent of -log W there, a line of slope 1 / (7 floor) per ms:
    finite, still steeper the slower the network, and pushing it back under 10 ms.
    """
    import torch

    span = ZERO_MS - FULL_MARKS_MS
    t = torch.as_tensor(t_ms)
    w = 1.0 - torch.clamp(t - FULL_MARKS_MS, min=0.0) / span
    t_floor = ZERO_MS - span * floor
    inside = -torch.log(torch.clamp(w, min=floor))
    beyond = -math.log(floor) + (t - t_floor) / (span * floor)
    return torch.where(w >= floor, inside, beyond)


def score(miou: float, t_ms: float) -> float:
    """mIoU x W(T), in the unit of ``miou`` (a fraction or percent)."""
    if not math.isfinite(float(miou)) or miou < 0:
        raise ValueError(f"mIoU {miou!r}: expected a non-negative number")
    return float(miou) * latency_weight(t_ms)


def flops_latency_ms(gflops: float, reference: tuple[str, float, float] = FLOPS_REFERENCE
                     ) -> float:
    """The FLOPs-proportional latency guess: reference ms x GFLOPs / reference GFLOPs."""
    _, ref_gflops, ref_ms = reference
    if not (math.isfinite(float(gflops)) and gflops > 0):
        raise ValueError(f"GFLOPs {gflops!r}: expected a positive number")
    return ref_ms * float(gflops) / ref_gflops
