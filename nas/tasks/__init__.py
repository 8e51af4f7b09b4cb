"""What differs per task, behind one interface that the search, training and the CLI share.

A task says how ``--data`` is read (``dataset_kind``, ``make_dataset``), which split training
validates on and which one ``nas eval`` scores, the training loss of a model's output on a
batch, and how a model is evaluated and the result printed. Everything else (the search space,
latency tables, search strategies, export) is common to all tasks.

- ``pose`` (``nas.tasks.pose``): heatmap regression, PCK/PCKh/OKS AP;
- ``seg`` (``nas.tasks.seg``): semantic segmentation, per-pixel cross-entropy, mIoU.

    task = get_task(cfg.task)
    train_set = task.make_dataset(cfg.data, "train", spec.skeleton, seed=0, augment=True)
    loss = task.loss(model(batch["image"]), batch)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from supernets.errors import NasError

__all__ = ["TASKS", "Task", "get_task"]

TASKS = ("pose", "seg")


class Task:
    """The per-task part of training, search and evaluation (subclass per task)."""

    name: str = ""
    description: str = ""
    target_keys: tuple[str, ...] = ()   # the batch entries ``loss`` reads besides the output
    # steps a search's shortlist trains on its own before the pick (SearchConfig.rank_finetune)
    rank_finetune_steps: int = 0

    def dataset_kind(self, data: str | Path | None) -> str:
        """The dataset ``data`` names, by layout (``synthetic`` when ``None``)."""
        raise NotImplementedError

    def make_dataset(self, data: str | Path | None, split: str, skeleton, *, seed: int,
                     augment: bool, limit: int | None = None, **options):
        """``split`` of the dataset ``data`` names, sized for ``skeleton`` (the spec's input and
        output), at most ``limit`` records; ``options``: the task's own reader settings."""
        raise NotImplementedError

    def reader_options(self, cfg, *, validation: bool = False) -> dict:
        """``make_dataset`` options a ``TrainConfig`` sets for the training (or validation)
        split."""
        return {}

    def validation_split(self, data: str | Path | None) -> str:
        """The split training validates on."""
        raise NotImplementedError

    def evaluation_split(self, data: str | Path | None) -> str:
        """The split ``nas eval`` scores by default."""
        raise NotImplementedError

    def loss(self, output: Tensor, batch: Mapping[str, Any]) -> Tensor:
        """The training loss of a model's ``output`` on ``batch`` (tensors on the model's
        device)."""
        raise NotImplementedError

    def distillation_loss(self, output: Tensor, teacher: Tensor,
                          batch: Mapping[str, Any]) -> Tensor:
        """The loss of ``output`` learning a teacher path's ``teacher`` output (the supernet's
        sandwich-kd rule)."""
        raise NotImplementedError

    def search_epochs(self, data: str | Path | None, *, batch_size: int, arch_split: float,
                      train_samples: int) -> int:
        """A search's epochs when none are given (``SearchConfig.epochs``) on ``data`` with
        these settings of the search. 10: pose's, chosen on its ground truth."""
        return 10

    def evaluate_model(self, model, dataset, **kwargs) -> dict:
        """The dataset's metric for ``model``: a dict with ``metric`` (its name), ``mean`` (the
        headline value, higher is better) and ``loss``."""
        raise NotImplementedError

    def format_result(self, result: dict) -> str:
        """``evaluate_model``'s result as text for the terminal."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<task {self.name}>"


def get_task(name: str) -> Task:
    """The task called ``name`` (``--task``); a one-line error for any other name."""
    if name == "pose":
        from nas.tasks.pose.task import POSE
        return POSE
    if name == "seg":
        from nas.tasks.seg.task import SEG
        return SEG
    raise NasError(f"--task {name!r}: expected one of {', '.join(TASKS)}")
