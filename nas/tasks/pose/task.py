"""Pose as a task of the engine: heatmap targets, weighted heatmap MSE, the dataset's metric."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from nas.tasks import Task
from nas.tasks.pose import data as _data
from nas.tasks.pose.evaluation import evaluate_model, format_result
from nas.tasks.pose.loss import heatmap_loss

__all__ = ["POSE", "PoseTask"]


class PoseTask(Task):
    """Single-person pose: LSP, MPII, COCO or the embedded synthetic figures (``nas.tasks.pose``).
    ``make_dataset`` options: ``sigma``, ``synthetic_size``, ``detections`` (COCO boxes)."""

    name = "pose"
    description = "single-person pose estimation (heatmaps)"
    target_keys = ("target", "target_weight")

    def dataset_kind(self, data: str | Path | None) -> str:
        return _data.dataset_kind(data)

    def make_dataset(self, data, split: str, skeleton, *, seed: int, augment: bool,
                     limit: int | None = None, **options):
        return _data.make_dataset(data, split, skeleton.input_size, skeleton.heatmap_size,
                                  seed=seed, augment=augment, num_joints=skeleton.num_joints,
                                  limit=limit, **options)

    def reader_options(self, cfg, *, validation: bool = False) -> dict:
        options = {"sigma": cfg.sigma}
        if validation:
            options["detections"] = cfg.detections
        return options

    def validation_split(self, data) -> str:
        return _data.VALIDATION_SPLIT[_data.dataset_kind(data)]

    def evaluation_split(self, data) -> str:
        return _data.EVALUATION_SPLIT[_data.dataset_kind(data)]

    def loss(self, output: Tensor, batch: Mapping[str, Any]) -> Tensor:
        return heatmap_loss(output, batch["target"], batch["target_weight"])

    def distillation_loss(self, output: Tensor, teacher: Tensor,
                          batch: Mapping[str, Any]) -> Tensor:
        """The teacher's heatmaps as targets, with the labels' joint weights."""
        return heatmap_loss(output, teacher, batch["target_weight"])

    def evaluate_model(self, model, dataset, **kwargs) -> dict:
        return evaluate_model(model, dataset, **kwargs)

    def format_result(self, result: dict) -> str:
        return format_result(result)


POSE = PoseTask()
