"""A model's predictions on a whole dataset, scored by that dataset's own metric.

``predict`` runs the model (optionally with flip test) and brings every joint back to original
image pixels; ``score`` asks the dataset for its metric (``dataset.score(predictions)``: PCKh for
MPII, OKS AP for COCO) and falls back to PCK@0.2 of the torso size (LSP, synthetic figures).
Every result has ``metric`` (its name), ``mean`` (the headline number, percent), ``per_joint``
({joint: percent}) and ``normaliser`` (what the distances are divided by, or how AP is matched).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from nas.tasks.pose.loss import heatmap_loss
from nas.tasks.pose.metrics import decode_heatmaps, flip_heatmaps, pck, to_image_coords

__all__ = ["PCK_THRESHOLD", "Predictions", "evaluate", "evaluate_model", "format_result", "predict",
           "score"]

PCK_THRESHOLD = 0.2  # LSP's usual PCK@0.2 of the torso size


@dataclass
class Predictions:
    """Per sample, in original image pixels: ``coords`` (N, J, 2) predicted, ``maxvals`` (N, J)
    heatmap peaks, ``joints`` (N, J, 3) ground truth, ``norm`` (N,), ``index`` (N,) dataset
    indices; ``loss`` the mean heatmap loss (on the unflipped prediction)."""

    coords: np.ndarray
    maxvals: np.ndarray
    joints: np.ndarray
    norm: np.ndarray
    index: np.ndarray
    loss: float


@torch.no_grad()
def predict(model: nn.Module, dataset, *, batch_size: int = 32, flip: bool = False,
            device: str | torch.device = "cpu", num_workers: int = 0,
            progress: bool = False) -> Predictions:
    """Run ``model`` over a ``PoseDataset`` in order (as configured, augmentation included).
    With ``flip``, the heatmaps of the input and of its mirror image are averaged."""
    base = _unwrap(dataset)
    was_training = model.training
    model.eval()
    out = {k: [] for k in ("coords", "maxvals", "joints", "norm", "index")}
    loss_sum, seen = 0.0, 0
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    try:
        for batch in tqdm(loader, disable=not progress, desc="eval", unit="batch", leave=False):
            images = batch["image"].to(device).contiguous(memory_format=torch.channels_last)
            heatmaps = model(images)
            loss_sum += float(heatmap_loss(heatmaps, batch["target"].to(device),
                                           batch["target_weight"].to(device))) * len(images)
            seen += len(images)
            if flip:
                mirrored = flip_heatmaps(model(images.flip(-1)), base.flip_pairs)
                heatmaps = (heatmaps + mirrored) / 2
            coords, maxvals = decode_heatmaps(heatmaps)
            out["coords"].append(to_image_coords(coords, batch["affine"], base.input_size,
                                                 base.heatmap_size))
            out["maxvals"].append(maxvals)
            out["joints"].append(batch["joints"].numpy())
            out["norm"].append(batch["norm"].numpy())
            out["index"].append(batch["index"].numpy())
    finally:
        model.train(was_training)
    return Predictions(**{k: np.concatenate(v) for k, v in out.items()},
                       loss=loss_sum / max(seen, 1))


def _unwrap(dataset):
    """The PoseDataset under ``torch.utils.data.Subset`` wrappers (e.g. a held-out part)."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


def score(dataset, predictions: Predictions) -> dict:
    """The dataset's metric of ``predictions`` (see module doc); ``dataset`` may be a
    ``Subset`` of one (predictions carry the underlying dataset's indices)."""
    dataset = _unwrap(dataset)
    own = getattr(dataset, "score", None)
    if own is not None:
        return own(predictions)
    result = pck(predictions.coords, predictions.joints, predictions.norm, PCK_THRESHOLD,
                 dataset.joint_names)
    result.update(metric=f"PCK@{PCK_THRESHOLD:g}", normaliser="torso size (mean of the two "
                  "shoulder-to-opposite-hip distances)")
    return result


def evaluate_model(model: nn.Module, dataset, *, flip: bool = False, batch_size: int = 32,
                   device: str | torch.device = "cpu", num_workers: int = 0,
                   progress: bool = False) -> dict:
    """``score`` of ``predict``, plus ``loss``, ``flip`` and ``samples``."""
    predictions = predict(model, dataset, batch_size=batch_size, flip=flip, device=device,
                          num_workers=num_workers, progress=progress)
    result = score(dataset, predictions)
    result.update(loss=predictions.loss, flip=flip, samples=len(predictions.index))
    return result


def evaluate(model: nn.Module, dataset, *, batch_size: int = 32, flip: bool = False,
             device: str | torch.device = "cpu", threshold: float = PCK_THRESHOLD,
             num_workers: int = 0) -> dict:
    """PCK@``threshold`` of ``model`` on ``dataset`` (a ``PoseDataset`` or a ``Subset`` of one),
    plus ``loss`` (mean heatmap loss of the unflipped prediction) and ``flip``."""
    predictions = predict(model, dataset, batch_size=batch_size, flip=flip, device=device,
                          num_workers=num_workers)
    result = pck(predictions.coords, predictions.joints, predictions.norm, threshold,
                 _unwrap(dataset).joint_names)
    result.update(loss=predictions.loss, flip=flip)
    return result


def format_result(result: dict) -> str:
    """A per-joint table and the mean, for people."""
    lines = [f"{result['metric']}: {result['mean']:.2f}   ({result['samples']} samples"
             f"{', flip test' if result.get('flip') else ''}; {result['normaliser']})"]
    if result.get("stats"):
        lines.append("  " + "  ".join(f"{k} {v:.2f}" for k, v in result["stats"].items()))
    if result.get("groups"):
        lines.append("  " + "  ".join(f"{k} {v:.2f}" for k, v in result["groups"].items()))
    if result.get("per_joint"):
        label = result.get("per_joint_metric", result["metric"])
        counts = result.get("per_joint_count", {})
        lines.append(f"  {'joint':<12} {label:>10} {'count':>7}")
        lines += [f"  {name:<12} {value:10.2f} {counts.get(name, ''):>7}"
                  for name, value in result["per_joint"].items()]
    return "\n".join(lines)
