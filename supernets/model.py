"""The standalone network a spec describes: a flat sequence of ops from ``spec.layers()``."""

from __future__ import annotations

from torch import Tensor, nn

from supernets.ops import build_op
from supernets.spec import ArchSpec

__all__ = ["PoseNet", "build_model"]


class PoseNet(nn.Module):
    """Image (N, 3, H, W) -> heatmaps (N, joints, H/4, W/4), one module per spec layer."""

    def __init__(self, spec: ArchSpec):
        super().__init__()
        self.spec = spec
        layers = spec.layers()
        self.labels = [layer.label for layer in layers]
        self.layers = nn.ModuleList(
            build_op(layer.op, layer.in_chs, layer.out_chs, layer.stride) for layer in layers)

    def layer(self, label: str) -> nn.Module:
        return self.layers[self.labels.index(label)]

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def build_model(spec: ArchSpec) -> PoseNet:
    return PoseNet(spec)
