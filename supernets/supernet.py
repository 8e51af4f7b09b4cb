"""The supernet: every candidate of every choice layer in one module.

A layer whose input width depends on an earlier choice (a head stage after a width choice) holds
one module per (input width, candidate), so each candidate always sees exactly the channels it
would see in the standalone network and weights copy over unchanged.

Activations flow between layers as ``{width: (x, m)}``: ``x`` is the weighted mean of the
outputs of that width, ``m`` the total weight of that width. A layer computes, per output width,
``sum_c sum_w m_w * w_c * op_c(x_w)`` and normalises it by its total weight again. Normalising
matters because every op starts with a conv followed by BatchNorm, which cancels any scaling of
its input: weights applied *after* the next op (``m_w``) and mixing ratios *within* a width are
what the next layer can see, so the task loss has a gradient for every choice, the width choices
of the head included. With one candidate of weight 1.0 per layer (a fixed architecture) no
arithmetic is added: the supernet computes exactly what the standalone network computes.

How candidates are weighted is the search strategy's business, not the supernet's: ``forward``
takes, per label, a *mix*: a list of ``(candidate index, weight)`` pairs. Softmax relaxation
passes every candidate with its probability, path sampling passes one or two, a fixed
architecture passes ``[(i, 1.0)]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from supernets.model import PoseNet
from supernets.ops import build_op
from supernets.space import SearchSpace, SpaceLayer
from supernets.spec import ArchSpec

__all__ = ["Mix", "MixedLayer", "SuperNet"]

Mix = Sequence[tuple[int, "Tensor | float"]]
Activation = tuple[Tensor, "Tensor | float"]


def _is_one(w) -> bool:
    return isinstance(w, float) and w == 1.0


def _mul(a, b):
    return b if _is_one(a) else a if _is_one(b) else a * b


def _clamp(total):
    """A width whose weight is zero contributes zero downstream; avoid 0 / 0 on the way."""
    return total.clamp_min(1e-12) if torch.is_tensor(total) else max(total, 1e-12)


def _key(in_width: int, index: int) -> str:
    return f"in{in_width}_c{index}"


class MixedLayer(nn.Module):
    def __init__(self, layer: SpaceLayer):
        super().__init__()
        self.layer = layer
        self.candidates = nn.ModuleDict({
            _key(w, i): build_op(c.op, w, c.out_chs, layer.stride, low_chs=layer.low_chs or None)
            for w in layer.in_widths for i, c in enumerate(layer.candidates)
            if not (c.op == "skip" and w != c.out_chs)
        })

    def candidate(self, in_width: int, index: int) -> nn.Module:
        return self.candidates[_key(in_width, index)]

    def forward(self, xs: Mapping[int, Activation], mix: Mix,
                low: Tensor | None = None) -> dict[int, Activation]:
        """``low``: the low-level feature of a segmentation head layer."""
        sums: dict[int, Tensor] = {}
        totals: dict[int, Tensor | float] = {}
        for index, weight in mix:
            width = self.layer.candidates[index].out_chs
            for w_in, (x, m_in) in xs.items():
                w = _mul(weight, m_in)
                op = self.candidate(w_in, index)
                y = op(x, low) if self.layer.low_from is not None else op(x)
                y = y if _is_one(w) else y * w
                sums[width] = sums[width] + y if width in sums else y
                totals[width] = totals[width] + w if width in totals else w
        return {width: (y if _is_one(totals[width]) else y / _clamp(totals[width]), totals[width])
                for width, y in sums.items()}


class SuperNet(nn.Module):
    def __init__(self, space: SearchSpace):
        super().__init__()
        self.space = space
        self.space_layers = space.layers()
        self.labels = [layer.label for layer in self.space_layers]
        self.mixed = nn.ModuleList(MixedLayer(layer) for layer in self.space_layers)
        # layers whose output a segmentation head also takes (its low-level feature)
        self.kept = {layer.low_from for layer in self.space_layers if layer.low_from is not None}

    @property
    def choice_layers(self) -> list[SpaceLayer]:
        return [layer for layer in self.space_layers if layer.searchable]

    def forward(self, x: Tensor, mixes: Mapping[str, Mix]) -> Tensor:
        """``mixes[label]`` for every searchable label; fixed layers need none."""
        xs: dict[int, Activation] = {x.shape[1]: (x, 1.0)}
        features: dict[str, Tensor] = {}
        for layer, mixed in zip(self.space_layers, self.mixed, strict=True):
            mix = mixes[layer.label] if layer.searchable else ((0, 1.0),)
            xs = mixed(xs, mix, features.get(layer.low_from) if layer.low_from else None)
            if layer.label in self.kept:
                # a low-level feature comes from a layer of fixed width (a backbone block)
                ((features[layer.label], _),) = xs.values()
        ((out, _),) = xs.values()
        return out

    def fixed_mixes(self, spec: ArchSpec) -> dict[str, Mix]:
        self.space.check(spec)
        return {layer.label: ((layer.index(spec.choices[layer.label]), 1.0),)
                for layer in self.choice_layers}

    @torch.no_grad()
    def standalone(self, spec: ArchSpec) -> PoseNet:
        """The spec's standalone network, with this supernet's weights for its choices."""
        self.space.check(spec)
        model = PoseNet(spec)
        for layer, mixed, target in zip(self.space_layers, self.mixed, spec.layers(), strict=True):
            index = layer.index(spec.choices[layer.label]) if layer.searchable else 0
            source = mixed.candidate(target.in_chs, index)
            model.layer(layer.label).load_state_dict(source.state_dict())
        if model.training != self.training:
            model.train(self.training)
        return model
