"""Table keys: the one function that names a row, used by both the builder and the predictor.

A row is one op at one input shape: ``row_key("mb_k3_e6", 24, 32, 2, (32, 32))`` is
``"mb_k3_e6|in24|out32|s2|32x32"``; a segmentation head, which also takes a low-level feature,
adds its channels and size: ``"seg_lraspp_w64|in96|out11|s16|11x15|low32@22x30"``. The
table-wide settings (device, batch, dtype, threads) live in the table's metadata, so a key never
repeats them; a table is only ever used with its own settings.

``space_rows(space)`` lists the rows a search space needs (every candidate at every input width
it can see there, ``skip`` only where in == out); ``spec_rows(spec)`` lists the rows one network
uses. Both go through ``row_key``, so what is measured is exactly what is looked up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from supernets.space import SearchSpace
from supernets.spec import ArchSpec, Layer

__all__ = ["RowShape", "layer_row", "parse_row_key", "row_key", "space_rows", "spec_rows"]

_KEY = re.compile(r"^(?P<op>[a-z0-9_]+)\|in(?P<i>\d+)\|out(?P<o>\d+)\|s(?P<s>\d+)\|"
                  r"(?P<h>\d+)x(?P<w>\d+)(?:\|low(?P<lc>\d+)@(?P<lh>\d+)x(?P<lw>\d+))?$")


def row_key(op: str, in_chs: int, out_chs: int, stride: int, in_hw: tuple[int, int],
            low_chs: int = 0, low_hw: tuple[int, int] | None = None) -> str:
    """The readable key of one row, e.g. ``"mb_k3_e6|in24|out32|s2|32x32"``."""
    h, w = in_hw
    key = f"{op}|in{in_chs}|out{out_chs}|s{stride}|{h}x{w}"
    if low_chs:
        key += f"|low{low_chs}@{low_hw[0]}x{low_hw[1]}"
    return key


@dataclass(frozen=True)
class RowShape:
    """One op at one input shape: what a table row measures."""

    op: str
    in_chs: int
    out_chs: int
    stride: int
    in_hw: tuple[int, int]
    low_chs: int = 0                         # a segmentation head's low-level feature
    low_hw: tuple[int, int] | None = None

    @property
    def key(self) -> str:
        return row_key(self.op, self.in_chs, self.out_chs, self.stride, self.in_hw,
                       self.low_chs, self.low_hw)

    def describe(self) -> str:
        h, w = self.in_hw
        low = (f", low-level feature {self.low_chs}x{self.low_hw[0]}x{self.low_hw[1]}"
               if self.low_chs else "")
        return (f"op {self.op}, {self.in_chs}->{self.out_chs} channels, stride {self.stride}, "
                f"input {h}x{w}{low}")

    def build(self):
        """The row's module, from the one op factory."""
        from supernets.ops import build_op
        return build_op(self.op, self.in_chs, self.out_chs, self.stride,
                        low_chs=self.low_chs or None)

    def inputs(self, batch: int, generator=None) -> tuple:
        """Random inputs of the row's shapes (the feature, and the low-level one if any)."""
        import torch
        shapes = [(batch, self.in_chs, *self.in_hw)]
        if self.low_chs:
            shapes.append((batch, self.low_chs, *self.low_hw))
        return tuple(torch.randn(s, generator=generator) for s in shapes)


def parse_row_key(key: str) -> RowShape:
    """Inverse of ``row_key``; ValueError for anything else."""
    m = _KEY.match(key)
    if not m:
        raise ValueError(f"{key!r} is not a row key (expected op|in<C>|out<C>|s<S>|<H>x<W>, "
                         "then |low<C>@<H>x<W> for a segmentation head)")
    low = (int(m["lc"]), (int(m["lh"]), int(m["lw"]))) if m["lc"] else (0, None)
    return RowShape(m["op"], int(m["i"]), int(m["o"]), int(m["s"]), (int(m["h"]), int(m["w"])),
                    *low)


def layer_row(layer: Layer) -> RowShape:
    return RowShape(layer.op, layer.in_chs, layer.out_chs, layer.stride, layer.in_hw,
                    layer.low_chs, layer.low_hw)


def spec_rows(spec: ArchSpec) -> list[tuple[str, RowShape]]:
    """``(label, row)`` for every layer of ``spec``, in network order."""
    return [(layer.label, layer_row(layer)) for layer in spec.layers()]


def space_rows(space: SearchSpace) -> list[RowShape]:
    """Every distinct row any network of ``space`` can use, in walk order."""
    rows: dict[str, RowShape] = {}
    for layer in space.layers():
        for w in layer.in_widths:
            for cand in layer.candidates:
                if cand.op == "skip" and w != cand.out_chs:
                    continue  # never built: skip cannot change the width
                row = RowShape(cand.op, w, cand.out_chs, layer.stride, layer.in_hw,
                               layer.low_chs, layer.low_hw)
                rows.setdefault(row.key, row)
    return list(rows.values())
