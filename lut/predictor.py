"""Latency predictions from a table: one network, a supernet under choice probabilities, bounds.

``raw_latency(spec)`` is the plain sum of the table's rows over ``spec.layers()``; ``latency(spec)``
applies the table's calibration (``a * sum + b``, fitted on whole networks measured end to end:
the per-network cost no per-op row sees; or the plain sum where that predicted the held-out
networks better) and the predictor's ``correction`` (1 unless measurements on this machine say
otherwise: ``corrected(factor)``). ``expected_latency(space, probs)`` is the same
quantity in expectation over independent per-layer choices, differentiable with respect to the
probabilities; on one-hot probabilities it equals ``latency`` of that spec exactly (the sums run
in the same order, in float64).

A layer after a width choice sees several input widths:
``E[layer] = sum_w P(in width = w) * sum_c p_c * T(c, w)``, where ``P(in width = w)`` is the
previous layer's probability mass on candidates with ``out_chs == w``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from lut.keys import RowShape, layer_row
from lut.table import Calibration, LatencyTable
from supernets.errors import NasError
from supernets.space import Candidate, SearchSpace
from supernets.spec import ArchSpec

__all__ = ["LatencyPredictor"]


@dataclass(frozen=True)
class _LayerCosts:
    """Raw row latencies of one space layer: ``costs[i, c]`` for in width i, candidate c."""

    label: str
    searchable: bool     # takes probabilities (more than one candidate)
    in_spec: bool        # named in a spec's choices (every backbone and head layer)
    in_widths: tuple[int, ...]
    candidates: tuple[Candidate, ...]
    costs: np.ndarray  # NaN where the pair is never built (skip changing the width)


class LatencyPredictor:
    """Predicts latency in ms on the table's device and settings."""

    def __init__(self, table: LatencyTable, correction: float = 1.0):
        calibration = table.calibration
        if calibration is None:
            raise NasError(f"{table.where()}: the table has no calibration (its build did not "
                           f"finish); finish it with: {table.build_command()}")
        self.table = table
        self.calibration: Calibration = calibration
        if not (math.isfinite(correction) and correction > 0):
            raise ValueError(f"correction = {correction!r}: expected a positive number")
        self.correction = float(correction)
        self._space_costs: dict[SearchSpace, list[_LayerCosts]] = {}

    def corrected(self, factor: float) -> LatencyPredictor:
        """This predictor with every prediction multiplied by ``factor``: what the machine's
        measurements say of the table now (the speed probe's ratio, or a search's measured /
        predicted latency of the networks it measured). Shares the row caches."""
        twin = copy.copy(self)
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"correction = {factor!r}: expected a positive number")
        twin.correction = float(factor)
        return twin

    # -- one network -------------------------------------------------------------------------
    def _row_ms(self, row: RowShape, label: str, space: SearchSpace | None) -> float:
        try:
            return self.table.latency_ms(row.key)
        except KeyError:
            raise NasError(
                f"{self.table.where()}: no row {row.key!r} ({row.describe()}) for layer "
                f"{label!r}; measure it with: {self.table.build_command(space)}") from None

    def raw_latency(self, spec: ArchSpec) -> float:
        """Plain sum of the rows over ``spec.layers()``, in ms."""
        space = self._spec_space(spec)
        total = 0.0
        for layer in spec.layers():
            total += self._row_ms(layer_row(layer), layer.label, space)
        return total

    def latency(self, spec: ArchSpec) -> float:
        """Calibrated latency of ``spec`` in ms (times the correction, if any)."""
        return self.correction * self.calibration.apply(self.raw_latency(spec))

    def _spec_space(self, spec: ArchSpec) -> SearchSpace:
        """The space whose build command measures ``spec``'s rows (for error messages)."""
        space = self.table.space
        if spec.skeleton == space.skeleton:
            return space
        from supernets.space import SPACES  # a spec from another space: name that one

        if spec.space in SPACES:
            h, w = spec.skeleton.input_size
            return SPACES[spec.space].with_input((h, w), spec.skeleton.num_joints)
        return space

    # -- a supernet under probabilities ------------------------------------------------------
    def layer_costs(self, space: SearchSpace) -> list[_LayerCosts]:
        """Per layer of ``space`` (fixed ones too), the raw row latency of every (input width,
        candidate) pair, NaN where never built: what network latencies are sums of."""
        return self._costs(space)

    def _costs(self, space: SearchSpace) -> list[_LayerCosts]:
        if space not in self._space_costs:
            layers = []
            for layer in space.layers():
                costs = np.full((len(layer.in_widths), len(layer.candidates)), np.nan)
                for i, w in enumerate(layer.in_widths):
                    for c, cand in enumerate(layer.candidates):
                        if cand.op == "skip" and w != cand.out_chs:
                            continue
                        row = RowShape(cand.op, w, cand.out_chs, layer.stride, layer.in_hw,
                                       layer.low_chs, layer.low_hw)
                        costs[i, c] = self._row_ms(row, layer.label, space)
                layers.append(_LayerCosts(layer.label, layer.searchable,
                                          layer.kind in ("backbone", "head", "seghead"),
                                          layer.in_widths,
                                          layer.candidates, costs))
            self._space_costs[space] = layers
        return self._space_costs[space]

    def expected_latency(self, space: SearchSpace,
                         probs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Calibrated expected latency (ms, 0-dim float64 tensor), differentiable in ``probs``.

        ``probs[label]`` is a 1-D tensor over ``layer.candidates`` for every layer in
        ``space.choice_layers()``.
        """
        layers = self._costs(space)
        device = next(iter(probs.values())).device if probs else torch.device("cpu")
        width_p: dict[int, torch.Tensor] = {3: torch.ones((), dtype=torch.float64, device=device)}
        total = torch.zeros((), dtype=torch.float64, device=device)
        for lc in layers:
            p = self._layer_probs(lc, probs, device)
            costs = torch.as_tensor(np.nan_to_num(lc.costs, nan=0.0), dtype=torch.float64,
                                    device=device)
            for i, w in enumerate(lc.in_widths):
                if w in width_p:
                    total = total + width_p[w] * (p * costs[i]).sum()
            outs = torch.as_tensor([c.out_chs for c in lc.candidates], device=device)
            width_p = {int(u): p[outs == u].sum() for u in torch.unique(outs).tolist()}
        return self.correction * self.calibration.apply(total)

    @staticmethod
    def _layer_probs(lc: _LayerCosts, probs: Mapping[str, torch.Tensor],
                     device: torch.device) -> torch.Tensor:
        if not lc.searchable:
            return torch.ones(1, dtype=torch.float64, device=device)
        try:
            p = probs[lc.label]
        except KeyError:
            raise ValueError(f"probs has no entry for choice layer {lc.label!r}") from None
        if p.shape != (len(lc.candidates),):
            raise ValueError(f"probs[{lc.label!r}] has shape {tuple(p.shape)}, expected "
                             f"({len(lc.candidates)},) (one per candidate)")
        return p.to(torch.float64)

    # -- bounds ------------------------------------------------------------------------------
    def bounds(self, space: SearchSpace) -> tuple[tuple[ArchSpec, float], tuple[ArchSpec, float]]:
        """``((fastest spec, its latency), (slowest spec, its latency))``, exact.

        A dynamic programme over the walk whose state is the current width: head stages' costs
        depend on the width chosen before them, so per-layer minima would not be exact.
        """
        fastest = self._extreme(space, slowest=False)
        slowest = self._extreme(space, slowest=True)
        return (fastest, self.latency(fastest)), (slowest, self.latency(slowest))

    def _extreme(self, space: SearchSpace, *, slowest: bool) -> ArchSpec:
        sign = -1.0 if slowest else 1.0  # minimise sign * raw; a > 0 keeps the order
        states: dict[int, tuple[float, dict[str, str]]] = {3: (0.0, {})}
        for lc in self._costs(space):
            nxt: dict[int, tuple[float, dict[str, str]]] = {}
            for i, w in enumerate(lc.in_widths):
                if w not in states:
                    continue
                cost, choices = states[w]
                for c, cand in enumerate(lc.candidates):
                    if np.isnan(lc.costs[i, c]):
                        continue
                    total = cost + sign * lc.costs[i, c]
                    if cand.out_chs not in nxt or total < nxt[cand.out_chs][0]:
                        chosen = {**choices, lc.label: cand.name} if lc.in_spec else choices
                        nxt[cand.out_chs] = (total, chosen)
            states = nxt
        _, choices = min(states.values(), key=lambda s: s[0])
        name = f"{space.name}-{'slowest' if slowest else 'fastest'}"
        return space.spec(choices, name)
