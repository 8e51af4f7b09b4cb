"""Search logs and the plot of choice probabilities and expected latency over the search."""

from __future__ import annotations

import io
import json
from pathlib import Path

from supernets.fileio import write_atomic

__all__ = ["plot_search", "write_jsonl"]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r, default=str) + "\n" for r in rows))


def plot_search(history: list[dict], names: dict[str, list[str]], budget_ms: float,
                path: Path) -> None:
    """Top: per layer, the probability of its currently most likely op, per epoch.
    Bottom: expected latency, the most probable architecture's latency and lambda per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if not history:
        return
    labels = list(history[-1]["probs"])
    final_best = {lb: int(np.argmax(history[-1]["probs"][lb])) for lb in labels}
    top = np.array([[h["probs"][lb][final_best[lb]] for h in history] for lb in labels])
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2, ax4) = plt.subplots(
        3, 1, figsize=(9, 4.5 + 0.22 * len(labels)),
        gridspec_kw={"height_ratios": [max(2, len(labels) / 6), 1, 0.8]})
    im = ax1.imshow(top, aspect="auto", cmap="viridis", vmin=0, vmax=1,
                    extent=(epochs[0] - 0.5, epochs[-1] + 0.5, len(labels) - 0.5, -0.5))
    ax1.set_yticks(range(len(labels)))
    ax1.set_yticklabels([f"{lb}: {names[lb][final_best[lb]]}" for lb in labels], fontsize=7)
    ax1.set_title("probability of the finally most likely op, per layer")
    fig.colorbar(im, ax=ax1, fraction=0.03)
    ax2.plot(epochs, [h["expected_ms"] for h in history], "o-", label="expected latency")
    ax2.plot(epochs, [h["argmax_ms"] for h in history], "^-", label="most probable arch.")
    ax2.axhline(budget_ms, color="r", linestyle="--", label="budget")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("ms")
    ax3 = ax2.twinx()
    ax3.plot(epochs, [h["lam"] for h in history], "s:", color="gray", label="lambda (right)")
    ax3.set_ylabel("lambda")
    lines = ax2.get_legend_handles_labels()
    extra = ax3.get_legend_handles_labels()
    ax2.legend(lines[0] + extra[0], lines[1] + extra[1], loc="upper left", fontsize=8, ncol=4)
    per_layer = [h.get("layer_entropy") for h in history]
    if all(per_layer):
        ent = np.array([[pl[lb] for lb in labels] for pl in per_layer])
        ax4.fill_between(epochs, ent.min(1), ent.max(1), alpha=0.25, label="layers' range")
        ax4.plot(epochs, ent.mean(1), "-", label="mean")
    else:
        ax4.plot(epochs, [h["entropy"] for h in history], "-", label="mean")
    ax4.set_ylim(0, 1.05)
    ax4.set_ylabel("entropy / max")
    ax4.set_xlabel("epoch")
    ax4.legend(loc="lower left", fontsize=8, ncol=2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_atomic(path, buf.getvalue())

