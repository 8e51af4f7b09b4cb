"""Semantic segmentation: dataset readers, samples and metrics.

- ``open_seg_dataset(root, split)`` -> (records, spec): CamVid (SegNet's), Cityscapes or Pascal
  VOC 2012, recognised by layout (``nas.tasks.seg.data``); ``camvid_records`` etc. read one kind.
- ``SegDataset(records, spec, crop, augment, seed)``: dicts of ``image`` (3, H, W) normalised,
  ``label`` (H, W) int64 train ids with 255 ignored, ``index``.
- ``ConfusionMatrix``: per-class IoU, mIoU and pixel accuracy over a split.
- ``score(miou, t_ms)`` = mIoU x W(T), ``latency_weight``, and ``flops_latency_ms``: the
  FLOPs-proportional latency guess the score is usually filled with (``nas.tasks.seg.score``).
"""

from nas.tasks.seg.data import (
    CAMVID,
    CITYSCAPES,
    DATASETS,
    IGNORE_INDEX,
    SPLITS,
    VOC,
    DatasetSpec,
    SegDataset,
    SegRecord,
    camvid_records,
    cityscapes_records,
    dataset_kind,
    open_seg_dataset,
    voc_records,
)
from nas.tasks.seg.metrics import ConfusionMatrix
from nas.tasks.seg.score import flops_latency_ms, latency_weight, score

__all__ = [
    "CAMVID", "CITYSCAPES", "DATASETS", "IGNORE_INDEX", "SPLITS", "VOC", "ConfusionMatrix",
    "DatasetSpec", "SegDataset", "SegRecord", "camvid_records", "cityscapes_records",
    "dataset_kind", "flops_latency_ms", "latency_weight", "open_seg_dataset", "score",
    "voc_records",
]
