"""The standalone network a spec describes: a flat sequence of ops from ``spec.layers()``.

A segmentation head also takes a low-level feature: the output of the layer its spec layer names
(``Layer.low_from``), kept on the way."""

from __future__ import annotations

from torch import Tensor, nn

from supernets.ops import build_op
from supernets.spec import ArchSpec

__all__ = ["Network", "PoseNet", "build_model"]


class PoseNet(nn.Module):
    """Image (N, 3, H, W) -> the task's maps, one module per spec layer: pose, heatmaps
    (N, joints, H/4, W/4); seg, class scores (N, classes, H, W)."""

    def __init__(self, spec: ArchSpec):
        super().__init__()
        self.spec = spec
        layers = spec.layers()
        self.labels = [layer.label for layer in layers]
        self.layers = nn.ModuleList(
            build_op(layer.op, layer.in_chs, layer.out_chs, layer.stride,
                     low_chs=layer.low_chs or None) for layer in layers)
        # (index of the layer whose output is kept, index of the layer that takes it)
        self.taps = [(self.labels.index(layer.low_from), i) for i, layer in enumerate(layers)
                     if layer.low_from is not None]

    def layer(self, label: str) -> nn.Module:
        return self.layers[self.labels.index(label)]

    def forward(self, x: Tensor) -> Tensor:
        if not self.taps:
            for layer in self.layers:
                x = layer(x)
            return x
        ((keep, use),) = self.taps
        low = x
        for i, layer in enumerate(self.layers):
            x = layer(x, low) if i == use else layer(x)
            if i == keep:
                low = x
        return x


Network = PoseNet   # the one standalone network class, whatever the task


def build_model(spec: ArchSpec) -> PoseNet:
    return PoseNet(spec)
