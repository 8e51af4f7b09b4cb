"""Derivation: from choice probabilities to one architecture inside the latency window.

Taking the most probable op per layer (EfficientPose) gives no guarantee on latency: the expected
latency under ``p`` is not the latency of the argmax. So the derived architecture maximises the
summed log-probability of its choices subject to ``low <= latency <= high`` (the budget window),
by a greedy walk from the argmax with the predictor as the only cost model:

1. over ``high``: repeatedly take the single-layer change that gives up the least
   log-probability per millisecond saved;
2. under ``low``: repeatedly take the change that gives up the least log-probability per
   millisecond added, without going over ``high``;
3. polish: single-layer changes that raise the log-probability and stay in the window.

Every latency is the predictor's whole-network value, so head stages whose input width depends on
the previous choice are priced exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from supernets.space import SearchSpace
from supernets.spec import ArchSpec

__all__ = ["Derivation", "derive"]


@dataclass(frozen=True)
class Derivation:
    spec: ArchSpec
    latency_ms: float
    argmax_latency_ms: float
    changed: tuple[str, ...]   # labels where the result differs from the argmax
    in_window: bool


def derive(space: SearchSpace, probs: Mapping[str, torch.Tensor],
           latency: Callable[[ArchSpec], float], window: tuple[float, float] | None,
           name: str = "searched") -> Derivation:
    layers = space.choice_layers()
    logp = {layer.label: [math.log(max(float(p), 1e-12)) for p in probs[layer.label]]
            for layer in layers}
    choice = {layer.label: max(range(len(layer.candidates)), key=logp[layer.label].__getitem__)
              for layer in layers}
    names = {layer.label: layer.names for layer in layers}

    def spec_of(c: Mapping[str, int]) -> ArchSpec:
        return space.spec({lb: names[lb][i] for lb, i in c.items()}, name)

    argmax = dict(choice)
    current = latency(spec_of(choice))
    argmax_latency = current
    if window is not None:
        low, high = window

        def moves():
            for layer in layers:
                lb = layer.label
                for i in range(len(layer.candidates)):
                    if i != choice[lb]:
                        trial = {**choice, lb: i}
                        yield lb, i, logp[lb][i] - logp[lb][choice[lb]], latency(spec_of(trial))

        while current > high:
            best = min(((lb, i, dl, t) for lb, i, dl, t in moves() if t < current),
                       key=lambda m: -m[2] / (current - m[3]), default=None)
            if best is None:
                break
            choice[best[0]], current = best[1], best[3]
        while current < low:
            best = min(((lb, i, dl, t) for lb, i, dl, t in moves() if current < t <= high),
                       key=lambda m: -m[2] / (m[3] - current), default=None)
            if best is None:
                break
            choice[best[0]], current = best[1], best[3]
        improved = low <= current <= high
        while improved:
            best = max(((lb, i, dl, t) for lb, i, dl, t in moves()
                        if dl > 1e-9 and low <= t <= high), key=lambda m: m[2], default=None)
            improved = best is not None
            if improved:
                choice[best[0]], current = best[1], best[3]
    in_window = window is None or window[0] <= current <= window[1]
    changed = tuple(lb for lb in choice if choice[lb] != argmax[lb])
    return Derivation(spec_of(choice), current, argmax_latency, changed, in_window)
