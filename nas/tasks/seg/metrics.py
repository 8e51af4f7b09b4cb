"""Segmentation metrics from one confusion matrix: per-class IoU, mIoU and pixel accuracy.

The matrix is accumulated over a whole split and the metrics computed once at the end (as in
the Cityscapes and VOC benchmarks), not averaged per image: a small image would weigh as much as
a large one, and a class absent from one image would make that image's IoU undefined.

A class absent from both predictions and targets has IoU NaN, left out of the mIoU (``nanmean``):
scoring it 0 or 1 would move the mean by a class the split never tested. A class present in the
targets but never predicted, or predicted but absent, has IoU 0 and counts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["ConfusionMatrix"]


def _as_ints(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"ConfusionMatrix: expected integer class maps, got {x.dtype}")
    return x.astype(np.int64).ravel()


class ConfusionMatrix:
    """``matrix[t, p]``: pixels of target class t predicted as p; pixels whose target is
    ``ignore_index`` are skipped."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if num_classes < 1:
            raise ValueError(f"ConfusionMatrix: num_classes is {num_classes}, expected >= 1")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Count class maps of equal shape (any shape: (H, W), a batch (N, H, W), ...)."""
        shapes = tuple(pred.shape), tuple(target.shape)
        if shapes[0] != shapes[1]:
            raise ValueError(f"ConfusionMatrix.update: pred {shapes[0]} and target {shapes[1]} "
                             "differ in shape")
        pred, target = _as_ints(pred), _as_ints(target)
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        n = self.num_classes
        for what, x in (("pred", pred), ("target", target)):
            if x.size and (x.min() < 0 or x.max() >= n):
                bad = x[(x < 0) | (x >= n)][0]
                raise ValueError(f"ConfusionMatrix.update: {what} value {bad}, expected "
                                 f"0..{n - 1} (or {self.ignore_index} in target: ignored)")
        self.matrix += np.bincount(n * target + pred, minlength=n * n).reshape(n, n)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add ``other``'s counts (e.g. from another worker); returns self."""
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError(f"ConfusionMatrix.merge: {other.num_classes} classes (ignore "
                             f"{other.ignore_index}) into {self.num_classes} (ignore "
                             f"{self.ignore_index})")
        self.matrix += other.matrix
        return self

    def iou(self) -> np.ndarray:
        """(C,) float64: TP / (TP + FP + FN) per class; NaN where the class never occurs."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(axis=0) + self.matrix.sum(axis=1) - tp
        out = np.full(self.num_classes, np.nan)
        np.divide(tp, union, out=out, where=union > 0)
        return out

    def miou(self) -> float:
        """Mean IoU over the classes that occur; NaN when nothing was counted."""
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def pixel_accuracy(self) -> float:
        """Correct pixels / counted pixels; NaN when nothing was counted."""
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")

    def _names(self, class_names: Sequence[str] | None) -> list[str]:
        if class_names is None:
            return [str(c) for c in range(self.num_classes)]
        if len(class_names) != self.num_classes:
            raise ValueError(f"ConfusionMatrix: {len(class_names)} class names for "
                             f"{self.num_classes} classes")
        return list(class_names)

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict:
        """JSON-ready: ``miou``, ``pixel_accuracy``, ``iou`` {class: value}; NaN as None."""
        def plain(v: float) -> float | None:
            return None if np.isnan(v) else float(v)
        return {"miou": plain(self.miou()), "pixel_accuracy": plain(self.pixel_accuracy()),
                "iou": {name: plain(v) for name, v in zip(self._names(class_names), self.iou())}}

    def table(self, class_names: Sequence[str] | None = None) -> str:
        """Per-class IoU in percent, one class a line ('-' where absent), then mIoU and pixel
        accuracy, names padded so the numbers line up."""
        names = self._names(class_names)
        rows = list(zip(names, self.iou())) + [("mIoU", self.miou()),
                                               ("pixel accuracy", self.pixel_accuracy())]
        width = max(len(name) for name, _ in rows)

        def line(name: str, v: float) -> str:
            return f"{name:<{width}}  " + ("      -" if np.isnan(v) else f"{100 * v:7.2f}")
        body = [line(n, v) for n, v in rows]
        rule = "-" * len(body[0])
        return "\n".join([f"{'class':<{width}}  {'IoU %':>7}", rule, *body[:-2], rule, *body[-2:]])
