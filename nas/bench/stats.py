"""Rank agreement between a score and the ground truth: Kendall tau, Spearman, top-k overlap."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

__all__ = ["rank_agreement", "top_overlap"]


def top_overlap(truth: Sequence[float], score: Sequence[float], fraction: float = 0.1) -> dict:
    """Of the ``fraction`` best networks by ``truth`` (at least one), how many are also among
    the same number of best by ``score`` (higher is better for both)."""
    truth, score = np.asarray(truth, float), np.asarray(score, float)
    k = max(1, math.ceil(fraction * len(truth)))
    best_truth = set(np.argsort(-truth, kind="stable")[:k].tolist())
    best_score = set(np.argsort(-score, kind="stable")[:k].tolist())
    shared = len(best_truth & best_score)
    return {"k": k, "shared": shared, "overlap": shared / k}


def rank_agreement(truth: Sequence[float], score: Sequence[float], *,
                   fraction: float = 0.1) -> dict:
    """Kendall tau-b and Spearman rho (with p-values) of ``score`` against ``truth`` and the
    top-``fraction`` overlap; pairs where either is NaN are left out (``n`` says how many
    remain). Higher is better for both; negate a loss before passing it."""
    truth, score = np.asarray(truth, float), np.asarray(score, float)
    keep = ~(np.isnan(truth) | np.isnan(score))
    truth, score = truth[keep], score[keep]
    n = int(keep.sum())
    if n < 3 or np.ptp(truth) == 0 or np.ptp(score) == 0:
        return {"n": n, "kendall_tau": math.nan, "kendall_p": math.nan,
                "spearman": math.nan, "spearman_p": math.nan, "top": top_overlap(truth, score,
                                                                                  fraction)
                if n else None}
    tau = stats.kendalltau(truth, score)
    rho = stats.spearmanr(truth, score)
    return {"n": n, "kendall_tau": float(tau.statistic), "kendall_p": float(tau.pvalue),
            "spearman": float(rho.statistic), "spearman_p": float(rho.pvalue),
            "top": top_overlap(truth, score, fraction)}
