"""NNI's one-shot strategies beside our search, on our space: step time and memory per strategy.

On the same space (``nas.interop.nni.model_space``: the same ops at the same shapes), batch,
data and thread count, in one run: one training step of the space's largest network (the
reference, ``benchmarks/search_step.py``'s ``largest-network``), our path-mode search step
(weight step plus architecture step, ``path``) and one training step of each of NNI 3.0's DARTS,
GumbelDARTS, Proxyless and RandomOneShot (their Lightning modules, driven by a Lightning
``Trainer``; DARTS-like steps include their architecture step on the same batch's first half,
as ours does). ENAS is left out: it needs NNI's optional RL dependencies.

Timing: configurations interleaved in rounds, one step each per round after one warm-up step,
medians reported; an NNI step is timed from Lightning's batch start to batch end (a fresh
``Trainer`` per round, so the trainer's own setup is not counted; its Adam state is made anew
each round, a first step's allocation on top). Memory: as ``search_step.py``, each
configuration in a fresh subprocess, peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs``)
during ``--mem-steps`` steps minus the RSS before them. Both as ratios to the largest network.

Without the extra (``pip install -e '.[nni]' && pip install --no-deps nni==3.0``) it prints one
line saying so and exits 0 (nothing measured, nothing written).

    python benchmarks/peers_nni.py [--space cpu-small] [--input 128x128] [--batch 16] \
        [--threads 2] [--steps 10] [--json] [--out results/benchmarks/peers_nni]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import search_step  # noqa: E402  (benchmarks/search_step.py: the reference and our search step)

from supernets.errors import NasError  # noqa: E402
from supernets.fileio import write_atomic  # noqa: E402

OURS = ("largest-network", "path")
NNI_STRATEGIES = {"nni-darts": "DARTS", "nni-gumbeldarts": "GumbelDARTS",
                  "nni-proxyless": "Proxyless", "nni-randomoneshot": "RandomOneShot"}
CONFIGS = (*OURS, *NNI_STRATEGIES)


def setup(space_name: str, input_size: str | None, lut_path: str | None):
    """The space and a latency predictor: ``--lut``, this machine's table of the space, or,
    where it has none, a table proportional to MACs (a search step costs the same whatever
    the table's values)."""
    import lut as lutlib
    from supernets.flops import op_macs
    from supernets.space import get_space

    size = tuple(int(v) for v in input_size.lower().split("x")) if input_size else None
    space = get_space(space_name, input_size=size)
    path = Path(lut_path) if lut_path else lutlib.default_table_path(space, "cpu")
    if lut_path or path.exists():
        return space, lutlib.LatencyPredictor(lutlib.LatencyTable.load(path, allow_foreign=True))
    rows = {r.key: op_macs(r.op, r.in_chs, r.out_chs, r.stride, r.in_hw, r.low_chs, r.low_hw)
            / 1e7 + 0.01 for r in lutlib.space_rows(space)}
    return space, lutlib.LatencyPredictor(lutlib.LatencyTable.from_rows(space, rows))


def make_nni_step(name: str, space, batch: int, seed: int = 0):
    """One training step of NNI strategy ``name`` on ``search_step.make_batch``'s batch; returns
    a closure that runs one step and returns its time in seconds."""
    import pytorch_lightning as pl
    from nni.nas import strategy as nni_strategy
    from nni.nas.evaluator.pytorch import LightningModule

    from nas.interop import nni as interop
    from nas.tasks import get_task

    task = get_task(space.skeleton.task)
    data = search_step.make_batch(space, batch, seed)
    half = {k: v[:batch // 2] for k, v in data.items()}   # ours: arch_batch_size, half a batch

    class PoseModule(LightningModule):
        def training_step(self, batch, batch_idx):
            return task.loss(self.model(batch["image"]), batch)

        def configure_optimizers(self):
            return torch.optim.Adam(self.model.parameters(), lr=1e-3)

    torch.manual_seed(seed)
    strategy = getattr(nni_strategy, NNI_STRATEGIES[name])()
    net = strategy.mutate_model(interop.model_space(space)).to(memory_format=torch.channels_last)
    module = PoseModule()
    module.set_model(net)
    oneshot = strategy.configure_oneshot_module(module)
    item = data if name == "nni-randomoneshot" else {"train": data, "val": half}

    class OneBatch:
        """The fixed batch as a loader (a list would be taken for several loaders)."""

        def __iter__(self):
            yield item

        def __len__(self):
            return 1

    class Timer(pl.Callback):
        def on_train_batch_start(self, *args):
            self.start = time.perf_counter()

        def on_train_batch_end(self, *args):
            self.seconds = time.perf_counter() - self.start

    def step() -> float:
        timer = Timer()
        trainer = pl.Trainer(max_steps=1, accelerator="cpu", devices=1, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0,
                             limit_val_batches=0, callbacks=[timer])
        trainer.fit(oneshot, train_dataloaders=OneBatch())
        return timer.seconds
    return step


def make_step(name: str, space, predictor, batch: int):
    """A closure running one step of ``name`` and returning its time in seconds."""
    if name in NNI_STRATEGIES:
        return make_nni_step(name, space, batch)
    return search_step.timed(search_step.make_step(name, space, predictor, batch))


def quiet() -> None:
    """NNI's and Lightning's warnings and info lines would bury the results."""
    import logging

    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "pytorch_lightning.utilities.rank_zero", "lightning",
                 "lightning_fabric", "nni"):
        logging.getLogger(name).setLevel(logging.ERROR)


def child(args) -> None:
    """Subprocess: peak RSS growth of ``args.child`` over ``--mem-steps`` steps."""
    quiet()
    space, predictor = setup(args.space, args.input, args.lut)
    step = make_step(args.child, space, predictor, args.batch)
    step()  # warm-up: Lightning's and Adam's first-step allocations are not the step's own
    growth, _ = search_step.peak_rss_growth(step, args.mem_steps)
    print(json.dumps({"peak_growth_mib": growth}))


def measure(args, space, predictor) -> dict:
    times = search_step.interleaved_times(
        {n: make_step(n, space, predictor, args.batch) for n in CONFIGS}, args.steps)
    memory = {}
    for n in CONFIGS:
        cmd = [sys.executable, __file__, "--child", n, "--space", args.space,
               "--batch", str(args.batch), "--threads", str(args.threads),
               "--mem-steps", str(args.mem_steps)]
        cmd += (["--input", args.input] if args.input else []) + (
            ["--lut", args.lut] if args.lut else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            last = (out.stderr.strip().splitlines() or ["no output"])[-1]
            raise NasError(f"memory run of {n} failed: {last}")
        memory[n] = json.loads(out.stdout.strip().splitlines()[-1])["peak_growth_mib"]
    return search_step.ratio_rows(times, memory)


def markdown(report: dict) -> str:
    lines = [f"# NNI's one-shot strategies beside our search ({report['space']}, "
             f"{report['input'][0]}x{report['input'][1]}, batch {report['batch']}, "
             f"{report['threads']} threads)", "",
             f"{report['what']}. Command: `{report['command']}`; NNI {report['nni']}, "
             f"torch {report['machine']['torch']}, {report['machine']['cpu']}.", "",
             "| config | median s | x largest | peak growth MiB | memory x largest |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for n, r in report["results"].items():
        lines.append(f"| {n} | {r['median_s']:.3f} | {r['time_ratio']:.2f} | "
                     f"{r['peak_growth_mib']:.0f} | {r['memory_ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="cpu-small", help="search space (default %(default)s)")
    ap.add_argument("--input", help="HxW instead of the space's input")
    ap.add_argument("--lut", help="latency table for our search step (default: this machine's "
                                  "table of the space, else one proportional to MACs)")
    ap.add_argument("--batch", type=int, default=16, help="batch size (default %(default)s)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default %(default)s)")
    ap.add_argument("--steps", type=int, default=10,
                    help="timed rounds, one step of each configuration each (default %(default)s)")
    ap.add_argument("--mem-steps", type=int, default=2,
                    help="steps per memory subprocess (default %(default)s)")
    ap.add_argument("--json", action="store_true", help="print the report as one JSON object")
    ap.add_argument("--out", default="results/benchmarks/peers_nni",
                    help="writes OUT.md and OUT.json (default %(default)s)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        from nas.interop import nni as interop

        version = interop.nni_version()
    except NasError as e:
        print(f"peers_nni: skipped: {e}")
        return 0
    try:
        if args.child:
            child(args)
            return 0
        quiet()
        space, predictor = setup(args.space, args.input, args.lut)
        rows = measure(args, space, predictor)
    except NasError as e:
        print(f"peers_nni: error: {e}", file=sys.stderr)
        return 1
    report = {
        "what": "step time and peak memory growth / training step of the largest network",
        "space": args.space, "input": list(space.skeleton.input_size), "batch": args.batch,
        "threads": args.threads, "steps": args.steps, "mem_steps": args.mem_steps,
        "memory": "peak RSS growth (VmHWM after clear_refs) in a subprocess per config",
        "nni": version,
        "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__},
        "command": " ".join(["python", *sys.argv]),
        "results": rows,
    }
    out = Path(args.out)
    write_atomic(out.with_name(out.name + ".json"), json.dumps(report, indent=2) + "\n")
    write_atomic(out.with_name(out.name + ".md"), markdown(report))
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{'config':<20}{'median s':>10}{'x largest':>11}{'mem MiB':>10}{'mem x':>8}")
    for n, r in rows.items():
        print(f"{n:<20}{r['median_s']:>10.3f}{r['time_ratio']:>11.2f}"
              f"{r['peak_growth_mib']:>10.0f}{r['memory_ratio']:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
