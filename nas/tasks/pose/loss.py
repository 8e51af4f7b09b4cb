"""The heatmap regression loss of SimpleBaseline/HRNet (``JointsMSELoss``)."""

from __future__ import annotations

from torch import Tensor

__all__ = ["heatmap_loss"]


def heatmap_loss(pred: Tensor, target: Tensor, target_weight: Tensor) -> Tensor:
    """0.5 x mean over samples and joints of (per-joint heatmap MSE x weight).

    ``pred`` and ``target`` are (N, J, h, w), ``target_weight`` (N, J). A joint of weight 0
    contributes nothing but still counts in the mean, as in HRNet, so the loss scale does not
    jump with the number of labelled joints. For 0/1 weights this equals HRNet's
    ``0.5 * MSE(pred * w, target * w)`` averaged over joints.
    """
    if pred.shape != target.shape:
        raise ValueError(f"heatmap_loss: prediction {tuple(pred.shape)} and target "
                         f"{tuple(target.shape)} differ in shape")
    if target_weight.shape != pred.shape[:2]:
        raise ValueError(f"heatmap_loss: target_weight {tuple(target_weight.shape)} should be "
                         f"{tuple(pred.shape[:2])} (samples, joints)")
    per_joint = (pred - target).pow(2).mean(dim=(2, 3))
    return 0.5 * (per_joint * target_weight.to(per_joint.dtype)).mean()
