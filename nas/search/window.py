"""Uniform draws among the architectures whose predicted latency lies in a window.

Drawing every layer uniformly and keeping what lands in the window (rejection) works in the
middle of a space's latency range and fails at its edges: in ``cpu-base`` at 64x64 a 3 ms budget
sits just above the fastest network (2.5 ms) while uniform draws take 10 to 18 ms, so not one in
thousands lands in the window. ``WindowSampler`` draws exactly uniformly among the networks of
the window instead, by counting.

The table's latency of a network is the calibrated sum of its layers' rows (``a * sum + b``,
``a > 0``: monotone), where a layer's row depends on its candidate and on the width the layer
before it chose. Costs are quantised to ``resolution`` steps of the raw sum; a forward pass counts,
per layer, width and quantised partial cost, how many choices of the layers so far reach it
(float64 counts: 7^28 ~ 1e23 fits); a draw then walks backwards from a final (width, cost) in the
window, choosing each layer's candidate in proportion to the counts that lead to it. Quantisation
can put a network a fraction of a step outside the window: such a draw is checked with the exact
predictor and drawn again.
"""

from __future__ import annotations

import math

import numpy as np

from supernets.errors import NasError
from supernets.space import SearchSpace
from supernets.spec import ArchSpec

__all__ = ["WindowSampler"]


class WindowSampler:
    """Exactly uniform draws (up to the quantisation, checked) of the architectures of
    ``space`` with ``low <= predictor.latency(spec) <= high`` (ms; ``None``: unbounded)."""

    def __init__(self, predictor, space: SearchSpace, low: float | None, high: float | None, *,
                 resolution: int = 4000):
        self.predictor, self.space = predictor, space
        self.low, self.high = low, high
        layers = predictor.layer_costs(space)
        slowest = sum(float(np.nanmax(lc.costs)) for lc in layers)
        self.step = max(slowest, 1e-9) / resolution
        scale = predictor.correction * predictor.calibration.a
        offset = predictor.correction * predictor.calibration.b
        # the window in raw table milliseconds, widened by the quantisation's worst error
        slack = self.step * len(layers)
        raw_low = -math.inf if low is None else (low - offset) / scale - slack
        raw_high = math.inf if high is None else (high - offset) / scale + slack
        self.layers = layers
        self.n = resolution + len(layers) + 2
        self.raw_window = (raw_low, raw_high)
        # quantised costs per layer: q[i, c], -1 where the pair is never built
        self.q = []
        for lc in layers:
            q = np.where(np.isnan(lc.costs), -1, np.rint(np.nan_to_num(lc.costs) / self.step))
            self.q.append(q.astype(np.int64))
        self.forward, self.final = self._count(None)
        self.count = float(sum(v.sum() for v in self.final.values()))
        if self.count == 0:
            raise NasError(f"no architecture of space {space.name} has a predicted latency in "
                           f"{low} - {high} ms")

    def _count(self, weights: dict[str, np.ndarray] | None):
        """Forward (weighted) counts per layer, and the final ones inside the window."""
        n = self.n
        counts: dict[int, np.ndarray] = {3: np.zeros(n)}
        counts[3][0] = 1.0
        forward = [counts]
        for lc, q in zip(self.layers, self.q, strict=True):
            wl = weights.get(lc.label) if weights and lc.in_spec else None
            nxt: dict[int, np.ndarray] = {}
            for i, w in enumerate(lc.in_widths):
                if w not in counts:
                    continue
                for c, cand in enumerate(lc.candidates):
                    if q[i, c] < 0 or (wl is not None and wl[c] <= 0):
                        continue
                    acc = nxt.setdefault(cand.out_chs, np.zeros(n))
                    k = int(q[i, c])
                    acc[k:] += counts[w][:n - k] * (1.0 if wl is None else wl[c])
            counts = nxt
            forward.append(counts)
        centers = np.arange(n) * self.step
        low, high = self.raw_window
        final = {w: np.where((centers >= low) & (centers <= high), v, 0.0)
                 for w, v in counts.items()}
        return forward, final

    def _draw(self, rng: np.random.Generator, forward, final,
              weights: dict[str, np.ndarray] | None) -> dict[str, str]:
        widths = list(final)
        mass = np.concatenate([final[w] for w in widths])
        j = rng.choice(len(mass), p=mass / mass.sum())
        n = len(final[widths[0]])
        w, k = widths[j // n], j % n
        choices = {}
        for li in range(len(self.layers) - 1, -1, -1):
            lc, q, before = self.layers[li], self.q[li], forward[li]
            wl = weights.get(lc.label) if weights and lc.in_spec else None
            options, mass = [], []
            for i, wi in enumerate(lc.in_widths):
                if wi not in before:
                    continue
                for c, cand in enumerate(lc.candidates):
                    if q[i, c] < 0 or cand.out_chs != w or q[i, c] > k:
                        continue
                    m = before[wi][k - q[i, c]] * (1.0 if wl is None else wl[c])
                    if m > 0:
                        options.append((wi, c, int(q[i, c])))
                        mass.append(m)
            mass = np.asarray(mass)
            wi, c, qc = options[rng.choice(len(options), p=mass / mass.sum())]
            if lc.in_spec:
                choices[lc.label] = lc.candidates[c].name
            w, k = wi, k - qc
        return choices

    def sample(self, rng: np.random.Generator, name: str = "window", *,
               weights: dict[str, np.ndarray] | None = None, tries: int = 1000) -> ArchSpec:
        """One network of the window: uniform, or with probability proportional to the product
        of its choices' ``weights`` (per choice label, one weight per candidate)."""
        return self.draws(rng, 1, name, weights=weights, tries=tries)[0]

    def draws(self, rng: np.random.Generator, n: int, name: str = "window", *,
              weights: dict[str, np.ndarray] | None = None, tries: int = 1000) -> list[ArchSpec]:
        """``n`` independent draws (see ``sample``), counting once."""
        if weights is None:
            forward, final = self.forward, self.final
        else:
            forward, final = self._count(weights)
            if sum(v.sum() for v in final.values()) <= 0:
                raise NasError(f"space {self.space.name}: the weights leave no network in the "
                               "window")
        out = []
        for _ in range(n):
            for _ in range(tries):
                spec = self.space.spec(self._draw(rng, forward, final, weights), name)
                ms = self.predictor.latency(spec)
                if (self.low is None or ms >= self.low) and (self.high is None or ms <= self.high):
                    out.append(spec)
                    break
            else:
                raise NasError(f"space {self.space.name}: no draw inside {self.low} - "
                               f"{self.high} ms after {tries} tries (the window is narrower "
                               "than the table's steps)")
        return out

    def distance(self, ms: float) -> float:
        """How far (ms) a predicted latency lies outside this window; 0 inside."""
        return max(0.0, (self.low - ms) if self.low is not None else 0.0,
                   (ms - self.high) if self.high is not None else 0.0)

    def near(self, spec: ArchSpec, rng: np.random.Generator, *, keep: float = 0.9,
             name: str = "repaired", spread: dict[str, np.ndarray] | None = None) -> ArchSpec:
        """A network of the window close to ``spec`` (which may lie outside it): drawn with
        weight ``keep`` on each of ``spec``'s choices and ``1 - keep`` spread over the other
        candidates of its layer (evenly, or in proportion to ``spread``'s weights for the layer
        when it gives them), so it changes as few layers as the window requires, and which ones
        at random."""
        weights = {}
        for layer in self.space.choice_layers():
            k = len(layer.candidates)
            i = layer.index(spec.choices[layer.label])
            w = np.full(k, (1.0 - keep) / max(1, k - 1))
            if spread is not None and np.delete(spread[layer.label], i).sum() > 0:
                w = np.asarray(spread[layer.label], dtype=float).copy()
                w[i] = 0.0
                w *= (1.0 - keep) / w.sum()
            w[i] = keep
            weights[layer.label] = w
        return self.sample(rng, name, weights=weights)
