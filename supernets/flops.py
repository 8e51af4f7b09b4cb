"""Parameters, MACs and FLOPs, counted by ``torch.utils.flop_counter``.

Convention: ``macs`` are multiply-accumulates of convolutions and matrix products (what papers in
this field usually call "FLOPs"); ``flops`` = 2 x ``macs`` (a multiply and an add each), which is
what ``torch.utils.flop_counter`` reports. BatchNorm, ReLU, additions and biases are not counted.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from supernets.model import PoseNet
from supernets.ops import build_op
from supernets.spec import ArchSpec

__all__ = ["Complexity", "complexity", "count_module", "op_macs"]


@dataclass(frozen=True)
class Complexity:
    params: int
    macs: int
    flops: int
    input_size: tuple[int, int]

    def to_dict(self) -> dict:
        return {"params": self.params, "macs": self.macs, "flops": self.flops,
                "input_size": list(self.input_size),
                "convention": "macs = multiply-accumulates (papers' 'FLOPs'); flops = 2 x macs"}


def count_module(module: nn.Module, input_shape: tuple[int, ...],
                 low_shape: tuple[int, ...] | None = None) -> tuple[int, int]:
    """(parameters, MACs) of one forward pass of ``module`` on zeros of ``input_shape`` (and a
    segmentation head's low-level feature of ``low_shape``)."""
    params = sum(p.numel() for p in module.parameters())
    was_training = module.training
    module.eval()
    counter = FlopCounterMode(display=False)
    inputs = (torch.zeros(input_shape),) + ((torch.zeros(low_shape),) if low_shape else ())
    with torch.no_grad(), counter:
        module(*inputs)
    module.train(was_training)
    return params, counter.get_total_flops() // 2


def complexity(spec: ArchSpec, batch: int = 1) -> Complexity:
    h, w = spec.skeleton.input_size
    params, macs = count_module(PoseNet(spec), (batch, 3, h, w))
    return Complexity(params, macs, 2 * macs, (h, w))


@functools.lru_cache(maxsize=4096)
def op_macs(op: str, in_chs: int, out_chs: int, stride: int, in_hw: tuple[int, int],
            low_chs: int = 0, low_hw: tuple[int, int] | None = None) -> int:
    """MACs of one op at batch 1 (cached: the op is built once per distinct shape);
    ``low_chs``, ``low_hw``: a segmentation head's low-level feature."""
    module = build_op(op, in_chs, out_chs, stride, low_chs=low_chs or None)
    return count_module(module, (1, in_chs, *in_hw), (1, low_chs, *low_hw) if low_chs else None)[1]
