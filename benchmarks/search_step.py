"""Search step cost relative to training the largest single network of the space.

One *search step* is what ``nas search`` does per batch after warm-up: a weight step (train split)
plus an architecture step (architecture split, latency term included; on half a batch by default,
``path-full-arch-batch`` on the whole batch). The reference is one
training step (forward, backward, Adam) of the space's largest standalone network on the same
batch. Timing: the configurations are interleaved in rounds in one process, medians reported.
Peak memory: each configuration runs in a fresh subprocess; after everything is built the
kernel's peak-RSS mark is reset (``/proc/self/clear_refs``), and the peak reached during the steps
minus the resident size before them is the configuration's working memory.

    python benchmarks/search_step.py [--space cpu-small] [--batch 16] [--rounds 5] \
        [--out results/benchmarks/search_step.json]
    python benchmarks/search_step.py --space efficientpose-a --preset lsp --threads 1 \
        --configs largest-network,path,reinforce --out results/benchmarks/search_step_pose.json
    python benchmarks/search_step.py --space seg-small --input 88x120 --lut SEG_TABLE \
        --out results/benchmarks/search_step_seg.json      # the segmentation space
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from supernets.fileio import write_atomic

CONFIGS = {
    "largest-network": {},
    "path": {"mode": "path"},
    "path-full-arch-batch": {"mode": "path", "arch_batch_size": None},
    "softmax": {"mode": "softmax"},
    "gumbel": {"mode": "gumbel"},
    "reinforce": {"mode": "reinforce", "lam_control": "expected"},
}


def make_batch(space, batch: int, seed: int = 0) -> dict:
    """A fixed random batch of the space's task (images channels-last, as in training)."""
    sk = space.skeleton
    h, w = sk.input_size
    hh, hw = sk.heatmap_size
    g = torch.Generator().manual_seed(seed)
    data = {"image": torch.randn(batch, 3, h, w, generator=g).contiguous(
                memory_format=torch.channels_last)}
    if sk.task == "seg":   # class ids, a tenth of the pixels void
        label = torch.randint(0, sk.num_classes, (batch, h, w), generator=g)
        data["label"] = torch.where(torch.rand(batch, h, w, generator=g) < 0.1, 255, label)
    else:
        data.update(target=torch.rand(batch, sk.num_joints, hh, hw, generator=g),
                    target_weight=torch.ones(batch, sk.num_joints))
    return data


def make_step(name: str, space, predictor, batch: int, seed: int = 0):
    """A closure running one step of configuration ``name`` on a fixed random batch."""
    from nas.search.searcher import SearchConfig, Searcher
    from nas.tasks import get_task
    from supernets.model import PoseNet

    sk = space.skeleton
    task = get_task(sk.task)
    data = make_batch(space, batch, seed)
    if name == "largest-network":
        torch.manual_seed(seed)
        model = PoseNet(space.largest()).to(memory_format=torch.channels_last).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step():
            loss = task.loss(model(data["image"]), data)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step
    settings = dict(CONFIGS[name])
    if "arch_batch_size" in settings:  # "full": the architecture step on the whole batch
        settings["arch_batch_size"] = batch
    cfg = SearchConfig(budget_ms=1.0, task=sk.task, space=space.name,
                       input_size=sk.input_size, epochs=2, warmup_epochs=0, batch_size=batch,
                       seed=seed, **settings)
    searcher = Searcher(cfg, space, predictor, [None] * batch, [None] * batch)
    arch_data = {k: v[:cfg.arch_batch_size] for k, v in data.items()}

    def step():
        searcher._weight_step(data, warmup=False, temperature=cfg.temperature)
        searcher._arch_step(arch_data, temperature=cfg.temperature)
    return step


def _setup(space_name: str, lut_path: str | None, input_size: str | None = None,
           preset: str | None = None):
    import lut as lutlib
    from supernets.space import get_space

    size = tuple(int(v) for v in input_size.lower().split("x")) if input_size else None
    space = get_space(space_name, preset=preset, input_size=size)
    path = Path(lut_path) if lut_path else lutlib.default_table_path(space, "cpu")
    table = lutlib.LatencyTable.load(path, allow_foreign=True)
    return space, lutlib.LatencyPredictor(table), path


def timed(run):
    """``run`` as a step that returns its own time in seconds."""
    def step() -> float:
        t = time.perf_counter()
        run()
        return time.perf_counter() - t
    return step


def interleaved_times(steps: dict, rounds: int) -> dict[str, list[float]]:
    """Each step once to warm up, then ``rounds`` rounds of every step in turn (side by side, so
    that a busy machine slows them alike); each step returns its own time in seconds."""
    for run in steps.values():
        run()
    times: dict[str, list[float]] = {n: [] for n in steps}
    for r in range(rounds):
        for n, run in steps.items():
            times[n].append(run())
        print(f"round {r + 1}/{rounds}: " + ", ".join(
            f"{n} {times[n][-1]:.2f}s" for n in steps), file=sys.stderr)
    return times


def ratio_rows(times: dict[str, list[float]], memory_mib: dict[str, float],
               reference: str = "largest-network") -> dict[str, dict]:
    """Median and p10/p90 step time and peak memory growth of each config, and both as a ratio
    to ``reference``'s."""
    ref_t, ref_m = float(np.median(times[reference])), memory_mib[reference]
    return {n: {"median_s": float(np.median(times[n])),
                "p10_s": float(np.percentile(times[n], 10)),
                "p90_s": float(np.percentile(times[n], 90)),
                "time_ratio": float(np.median(times[n])) / ref_t,
                "peak_growth_mib": memory_mib[n],
                "memory_ratio": memory_mib[n] / ref_m} for n in times}


def peak_rss_growth(step, steps: int) -> tuple[float, float]:
    """Peak RSS growth (MiB) of this process over ``steps`` calls of ``step``, and the peak
    (MiB): the kernel's peak mark is reset to the current RSS first."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (peak RSS) to the current RSS
    before = _status_kib("VmRSS")
    for _ in range(steps):
        step()
    peak = _status_kib("VmHWM")
    return (peak - before) / 1024, peak / 1024


def child(args) -> None:
    """Subprocess: peak RSS growth of ``args.child`` over a few steps."""
    space, predictor, _ = _setup(args.space, args.lut, args.input, args.preset)
    step = make_step(args.child, space, predictor, args.batch)
    growth, peak = peak_rss_growth(step, args.mem_steps)
    print(json.dumps({"peak_growth_mib": growth, "peak_mib": peak}))


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="cpu-small")
    ap.add_argument("--preset", help="a dataset preset of the space (input size and joints or "
                                     "classes), e.g. lsp")
    ap.add_argument("--input", help="HxW instead of the space's input (a table of that size)")
    ap.add_argument("--lut")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--mem-steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="results/benchmarks/search_step.json")
    ap.add_argument("--child")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return
    names = args.configs.split(",")
    space, predictor, lut_path = _setup(args.space, args.lut, args.input, args.preset)
    times = interleaved_times({n: timed(make_step(n, space, predictor, args.batch))
                               for n in names}, args.rounds)
    memory = {}
    for n in names:
        out = subprocess.run([sys.executable, __file__, "--child", n, "--space", args.space,
                              "--batch", str(args.batch), "--threads", str(args.threads),
                              "--mem-steps", str(args.mem_steps)]
                             + (["--lut", args.lut] if args.lut else [])
                             + (["--input", args.input] if args.input else [])
                             + (["--preset", args.preset] if args.preset else []),
                             capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"memory run of {n} failed:\n{out.stderr}")
        memory[n] = json.loads(out.stdout.strip().splitlines()[-1])
    rows = ratio_rows(times, {n: m["peak_growth_mib"] for n, m in memory.items()})
    report = {
        "what": "search step (weight + architecture step) / training step of the largest network",
        "space": args.space, "input": list(space.skeleton.input_size), "batch": args.batch,
        "threads": args.threads, "rounds": args.rounds, "lut": str(lut_path),
        "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__},
        "command": " ".join(["python", *sys.argv]),
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(Path(args.out), json.dumps(report, indent=2) + "\n")
    print(f"{'config':<18}{'median s':>10}{'x largest':>11}{'mem MiB':>10}{'mem x':>8}")
    for n, r in rows.items():
        print(f"{n:<18}{r['median_s']:>10.3f}{r['time_ratio']:>11.2f}"
              f"{r['peak_growth_mib']:>10.0f}{r['memory_ratio']:>8.2f}")


if __name__ == "__main__":
    main()
