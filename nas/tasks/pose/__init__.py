"""Pose data, loss, decoding and metrics.

- ``make_dataset(None, ...)``: synthetic figures (``SyntheticPose``), nothing to download;
  ``make_dataset(path, ...)``: Leeds Sports Pose (``LSP``), MPII (``MPII``) or COCO
  (``COCOKeypoints``), recognised by layout (``nas.tasks.pose.data``). All yield the ``PoseDataset``
  dict (crop, Gaussian targets, weights, joints in original pixels, the crop's affine, ``norm``).
- ``heatmap_loss``: weighted heatmap MSE.
- ``decode_heatmaps`` -> ``to_image_coords`` -> ``pck``; ``evaluate`` runs all three on a model.
- ``evaluate_model``: a model on a dataset, by the dataset's own metric (PCK@0.2 for LSP and
  synthetic data, PCKh@0.5 for MPII, OKS AP for COCO), with per-joint values.

Joint order for 14 joints is LSP's (``LSP_JOINTS``); coordinates put pixel centres at integers.
"""

from nas.tasks.pose.coco import COCO_STATS, COCOKeypoints
from nas.tasks.pose.data import (
                           DEFAULT_SYNTHETIC_SIZE,
                           EVALUATION_SPLIT,
                           SYNTHETIC_SPLITS,
                           VALIDATION_SPLIT,
                           dataset_kind,
                           make_dataset,
)
from nas.tasks.pose.dataset import PoseDataset
from nas.tasks.pose.evaluation import (
                           Predictions,
                           evaluate,
                           evaluate_model,
                           format_result,
                           predict,
                           score,
)
from nas.tasks.pose.joints import (
                           COCO_FLIP_PAIRS,
                           COCO_JOINTS,
                           JOINT_SETS,
                           LSP_FLIP_PAIRS,
                           LSP_JOINTS,
                           MPII_FLIP_PAIRS,
                           MPII_JOINTS,
                           torso_size,
)
from nas.tasks.pose.loss import heatmap_loss
from nas.tasks.pose.lsp import LSP, LSP_SPLITS
from nas.tasks.pose.metrics import decode_heatmaps, flip_heatmaps, pck, to_image_coords
from nas.tasks.pose.mpii import MPII, MPII_SPLITS
from nas.tasks.pose.synthetic import SyntheticPose
from nas.tasks.pose.transforms import Augmentation

__all__ = [
    "COCO_FLIP_PAIRS", "COCO_JOINTS", "COCO_STATS", "DEFAULT_SYNTHETIC_SIZE", "EVALUATION_SPLIT",
    "JOINT_SETS", "LSP", "LSP_FLIP_PAIRS", "LSP_JOINTS", "LSP_SPLITS", "MPII", "MPII_FLIP_PAIRS",
    "MPII_JOINTS", "MPII_SPLITS", "SYNTHETIC_SPLITS", "VALIDATION_SPLIT", "Augmentation",
    "COCOKeypoints", "PoseDataset", "Predictions", "SyntheticPose", "dataset_kind",
    "decode_heatmaps", "evaluate", "evaluate_model", "flip_heatmaps", "format_result",
    "heatmap_loss", "make_dataset", "pck", "predict", "score", "to_image_coords", "torso_size",
]
