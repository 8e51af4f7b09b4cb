"""Semantic segmentation as a task of the engine: per-pixel cross-entropy, mIoU.

Data (``--data``): omitted, the embedded synthetic shapes (``SyntheticSeg``); a CamVid, Cityscapes
or Pascal VOC folder, recognised by layout (``nas.tasks.seg.data``). Training samples are random
``skeleton.input_size`` crops of randomly scaled and flipped images; evaluation scores each image
at its own resolution, as published results are: a batch is padded at the bottom and right to a
multiple of 32 (image 0 after normalisation, label 255, so the padding is never scored).

The metric is the confusion-matrix mIoU over the split (``ConfusionMatrix``; the ignore label
255 is left out), with pixel accuracy and per-class IoU, in percent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from nas.tasks import Task
from nas.tasks.seg.data import IGNORE_INDEX, SegDataset, open_seg_dataset
from nas.tasks.seg.data import dataset_kind as _seg_kind
from nas.tasks.seg.metrics import ConfusionMatrix
from nas.tasks.seg.synthetic import SYNTHETIC_SPLITS, SyntheticSeg
from supernets.errors import NasError

__all__ = ["SEG", "SegTask", "evaluate_model", "format_result", "pad_collate",
           "segmentation_loss"]

VALIDATION_SPLIT = {"synthetic": "val", "camvid": "val", "cityscapes": "val", "voc": "val"}
EVALUATION_SPLIT = {"synthetic": "test", "camvid": "test", "cityscapes": "val", "voc": "val"}
DEFAULT_SYNTHETIC_SIZE = 1000
# A search's supernet trains at least this many weight steps by default. On CamVid (seg-a, a
# uniform supernet, 18 steps of batch 16 an epoch), 24 window networks ranked by held-out loss
# after 180, 360 and 720 steps agreed with their ranking after 1080 by Kendall tau 0.34, 0.47
# and 0.73, while two scorings on halves of the held-out images agreed by 0.93 or more at every
# length (results/benchmarks/seg_proxy_stability.md): early on the ranking is measured, not
# noise, but it ranks how far a path has got, not where it ends. 720 steps (40 CamVid epochs,
# ~10 min on 2 CPU cores) keeps the search below the cost of retraining one network; there is
# no segmentation ground truth to say whether longer ranks better still.
SEARCH_WEIGHT_STEPS = 720


def segmentation_loss(scores: Tensor, labels: Tensor) -> Tensor:
    """Mean per-pixel cross-entropy over the labelled pixels (255 ignored)."""
    if scores.shape[-2:] != labels.shape[-2:] or scores.shape[0] != labels.shape[0]:
        raise ValueError(f"segmentation_loss: scores {tuple(scores.shape)} and labels "
                         f"{tuple(labels.shape)} differ in batch or size")
    return F.cross_entropy(scores, labels, ignore_index=IGNORE_INDEX)


PAD_MULTIPLE = 32   # any output stride of the spaces divides it


def pad_collate(samples: list[dict]) -> dict:
    """A batch of samples of any sizes: each padded at the bottom and right to the batch's
    largest size rounded up to ``PAD_MULTIPLE`` (image 0, label ``IGNORE_INDEX``)."""
    h = max(s["image"].shape[-2] for s in samples)
    w = max(s["image"].shape[-1] for s in samples)
    h, w = (-(-v // PAD_MULTIPLE) * PAD_MULTIPLE for v in (h, w))
    images = torch.zeros(len(samples), 3, h, w)
    labels = torch.full((len(samples), h, w), IGNORE_INDEX, dtype=torch.int64)
    for i, s in enumerate(samples):
        sh, sw = s["label"].shape
        images[i, :, :sh, :sw] = s["image"]
        labels[i, :sh, :sw] = s["label"]
    return {"image": images, "label": labels,
            "index": torch.tensor([int(s["index"]) for s in samples])}


def _unwrap(dataset):
    return dataset.dataset if isinstance(dataset, Subset) else dataset


@torch.no_grad()
def evaluate_model(model: nn.Module, dataset, *, flip: bool = False, batch_size: int = 16,
                   device: str | torch.device = "cpu", num_workers: int = 0,
                   progress: bool = False) -> dict:
    """mIoU (percent) of ``model`` on ``dataset`` (a ``SegDataset``, ``SyntheticSeg`` or a
    ``Subset`` of one), with pixel accuracy, per-class IoU and the mean loss; ``flip``: scores
    averaged with those of the mirrored image."""
    spec = _unwrap(dataset).spec
    device = torch.device(device)
    was_training = model.training
    model.eval()
    matrix = ConfusionMatrix(spec.num_classes, spec.ignore_index)
    loss_sum, pixels = 0.0, 0
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                        collate_fn=pad_collate)
    try:
        for batch in tqdm(loader, desc="eval", unit="batch", disable=not progress,
                          leave=False):
            images = batch["image"].to(device).contiguous(memory_format=torch.channels_last)
            labels = batch["label"].to(device)
            scores = model(images)
            if scores.shape[1] != spec.num_classes:
                raise NasError(f"the model predicts {scores.shape[1]} classes, "
                               f"{spec.name} has {spec.num_classes}")
            labelled = int((labels != spec.ignore_index).sum())
            if labelled:
                loss_sum += float(segmentation_loss(scores, labels)) * labelled
                pixels += labelled
            if flip:
                scores = (scores.softmax(1)
                          + model(images.flip(-1)).flip(-1).softmax(1)) / 2
            matrix.update(scores.argmax(1), labels)
    finally:
        model.train(was_training)
    d = matrix.to_dict(spec.class_names)
    per_class = {k: (None if v is None else 100 * v) for k, v in d["iou"].items()}
    return {"metric": "mIoU", "mean": 100 * (d["miou"] or 0.0),
            "pixel_accuracy": 100 * (d["pixel_accuracy"] or 0.0), "per_class": per_class,
            "loss": loss_sum / pixels if pixels else float("nan"), "flip": flip,
            "samples": len(dataset), "dataset": spec.name,
            "confusion": matrix.matrix.tolist()}


def format_result(result: dict) -> str:
    """Per-class IoU, mIoU and pixel accuracy as a table, for people."""
    names = list(result["per_class"])
    width = max(len(n) for n in names + ["pixel accuracy"])
    lines = [f"mIoU: {result['mean']:.2f}   ({result['samples']} images of "
             f"{result['dataset']}{', flip test' if result.get('flip') else ''}; loss "
             f"{result['loss']:.4f})", f"  {'class':<{width}}  {'IoU %':>7}"]
    lines += [f"  {n:<{width}}  " + ("      -" if v is None else f"{v:7.2f}")
              for n, v in result["per_class"].items()]
    lines += [f"  {'mIoU':<{width}}  {result['mean']:7.2f}",
              f"  {'pixel accuracy':<{width}}  {result['pixel_accuracy']:7.2f}"]
    return "\n".join(lines)


def search_epochs(data, *, batch_size: int = 16, arch_split: float = 0.2,
                  train_samples: int = 1024) -> int:
    """``SegTask.search_epochs``: the epochs for ``SEARCH_WEIGHT_STEPS`` weight steps (the
    search's split: ``arch_split`` of the training images held out, at least a batch)."""
    n = train_samples if data is None else len(open_seg_dataset(data, "train")[0])
    weight = n - max(batch_size, int(round(n * arch_split)))
    steps = max(1, weight // batch_size)
    return max(10, math.ceil(SEARCH_WEIGHT_STEPS / steps))


class SegTask(Task):
    """Semantic segmentation (see the module doc). ``make_dataset`` option: ``synthetic_size``."""

    name = "seg"
    description = "semantic segmentation (per-pixel classes)"
    target_keys = ("label",)
    # the shortlist's own training before the pick (nas.search.rank): 60 steps put the CamVid
    # proof's LR-ASPP networks first where the supernet ranked them 5th and 7th of 8
    rank_finetune_steps = 60

    def dataset_kind(self, data: str | Path | None) -> str:
        return "synthetic" if data is None else _seg_kind(data)

    def make_dataset(self, data, split: str, skeleton, *, seed: int, augment: bool,
                     limit: int | None = None, synthetic_size: int = DEFAULT_SYNTHETIC_SIZE,
                     **options):
        if options:
            raise NasError(f"segmentation data takes no {', '.join(sorted(options))} option")
        if limit is not None and limit < 1:
            raise NasError(f"limit must be at least 1, not {limit}")
        size = tuple(skeleton.input_size)
        if data is None:
            if split not in SYNTHETIC_SPLITS:
                raise NasError(f"unknown split {split!r} for synthetic data; expected one of "
                               f"{', '.join(SYNTHETIC_SPLITS)}")
            n = min(synthetic_size, limit) if limit is not None else synthetic_size
            return SyntheticSeg(n, size, skeleton.num_classes, stream=SYNTHETIC_SPLITS[split],
                                seed=seed, augment=augment)
        records, spec = open_seg_dataset(data, split)
        if spec.num_classes != skeleton.num_classes:
            raise NasError(f"{data}: {spec.name} has {spec.num_classes} classes, the model "
                           f"predicts {skeleton.num_classes} (use an arch with "
                           f"{spec.num_classes} classes)")
        if limit is not None:
            records = records[:limit]
        # evaluation at each image's own size (see the module doc)
        return SegDataset(records, spec, crop=size if augment else None, augment=augment,
                          seed=seed)

    def validation_split(self, data) -> str:
        return VALIDATION_SPLIT[self.dataset_kind(data)]

    def evaluation_split(self, data) -> str:
        return EVALUATION_SPLIT[self.dataset_kind(data)]

    def loss(self, output: Tensor, batch: Mapping[str, Any]) -> Tensor:
        return segmentation_loss(output, batch["label"])

    def distillation_loss(self, output: Tensor, teacher: Tensor,
                          batch: Mapping[str, Any]) -> Tensor:
        """Cross-entropy against the teacher's class probabilities on the labelled pixels."""
        keep = (batch["label"] != IGNORE_INDEX).unsqueeze(1)
        per_pixel = -(teacher.softmax(1) * output.log_softmax(1)).sum(1, keepdim=True)
        return (per_pixel * keep).sum() / keep.sum().clamp_min(1)

    def search_epochs(self, data, *, batch_size: int, arch_split: float,
                      train_samples: int) -> int:
        """Enough epochs for ``SEARCH_WEIGHT_STEPS`` weight steps of one process on ``data``'s
        training split (its weight part), at least 10: 40 on CamVid, 15 on the synthetic data,
        10 on Cityscapes and Pascal VOC."""
        return search_epochs(data, batch_size=batch_size, arch_split=arch_split,
                             train_samples=train_samples)

    def evaluate_model(self, model, dataset, **kwargs) -> dict:
        return evaluate_model(model, dataset, **kwargs)

    def format_result(self, result: dict) -> str:
        return format_result(result)


SEG = SegTask()

