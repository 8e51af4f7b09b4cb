"""What the proofs share: stages in a work folder that a rerun continues, and their verdict.

A proof (``benchmarks/pose_proof.py``, ``benchmarks/seg_proof.py``) measures a hand-designed
baseline end to end (its median latency is the budget), searches under that budget, draws random
networks of the space with the same predicted latency, retrains every network with one recipe
and measures them all side by side. ``Stages`` runs each step; each writes its output into the
work folder (atomically, ``supernets.fileio.write_atomic``) and returns it without redoing the
work when it is there already. A search or training run killed half-way continues from its
checkpoint::

    settings.json                  the settings the folder was started with   Stages.pin
    budget.json                    the baseline measured in a fresh process   Stages.budget
    search/report.json             nas.search.search's report                 Stages.search
    randoms.json                   the random networks and the window         Stages.randoms
    train/<model>/metrics.json     nas.train.train's report                   Stages.train
    train/<model>/<split>.json     the last model scored on a split           Stages.evaluate
    latency.json                   every model, interleaved rounds            Stages.latency

A stage stopped by Ctrl-C after writing its checkpoint raises ``Interrupted``; ``run_main`` turns
that, Ctrl-C elsewhere (exit 130) and a ``NasError`` (one line, exit 2) into a proof's exit status.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import platform
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import lut as lutlib
from lut.fingerprint import describe, fingerprint
from lut.isolated import measure_network_isolated
from nas.bench.posebench import draw_in_window
from nas.search import SearchConfig, search
from nas.train import TrainConfig, learning_rate, train
from supernets.errors import NasError
from supernets.fileio import write_atomic
from supernets.space import SearchSpace
from supernets.spec import ArchSpec

__all__ = ["ABLATION", "WINDOW", "Interrupted", "Stages", "compare", "derivation_only",
           "draw_randoms", "machine", "measure_side_by_side", "predicted_latency", "read_json",
           "recipe_of", "run_main", "search_option", "search_seconds", "verdict_lines",
           "write_json", "yes"]

WINDOW = (0.85, 1.0)          # predicted latency / budget of the random networks
ABLATION = "searched-derivation-only"


class Interrupted(Exception):
    """A search or training run stopped on Ctrl-C after writing its checkpoint."""


def check_positive(ap: argparse.ArgumentParser, args: argparse.Namespace,
                   names: Iterable[str]) -> None:
    """A usage error (one line, exit 2) for any of ``names`` given below 1."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            ap.error(f"--{name.replace('_', '-')} {value}: expected a positive integer")


def add_search_threads(ap: argparse.ArgumentParser) -> None:
    """``--search-threads``; ``search_threads`` reads it (check it with ``check_positive``)."""
    ap.add_argument("--search-threads", type=int,
                    help="CPU threads for the search alone (default --threads): the search runs "
                         "by itself, so it can take the cores that --jobs trainings share later")


def search_threads(args: argparse.Namespace) -> int | None:
    """The search's threads: ``--search-threads``, else ``--threads``."""
    return args.search_threads or args.threads


def search_option(reserved: Iterable[str] = ()) -> Callable[[str], tuple[str, object]]:
    """The argparse type of ``--search-option KEY=VALUE``: a ``SearchConfig`` field other than
    the ``reserved`` ones the proof sets itself; the value read as JSON, else as a string."""
    reserved = frozenset(reserved)
    fields = {f.name for f in dataclasses.fields(SearchConfig)} - reserved

    def parse(text: str) -> tuple[str, object]:
        key, sep, value = text.partition("=")
        if key in reserved:
            raise argparse.ArgumentTypeError(f"{text!r}: the proof sets {key} itself")
        if not sep or key not in fields:
            raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE with KEY a "
                                             "SearchConfig field (strategy, mode, lam_control, "
                                             "trials, ...)")
        try:
            return key, json.loads(value)
        except json.JSONDecodeError:
            return key, value

    return parse


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise NasError(f"{path}: unreadable stage output ({e}); delete it to redo the stage"
                       ) from None


def write_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def log(name: str, message: str) -> None:
    print(f"[{name}] {message}", file=sys.stderr, flush=True)


# -- what the stages measure ------------------------------------------------------------------
def draw_randoms(space: SearchSpace, predictor: lutlib.LatencyPredictor, budget_ms: float,
                 count: int, seed: int) -> dict:
    """The first ``count`` draws whose predicted latency is inside the window.

    A budget above the space's slowest network (which the search then treats as accuracy only)
    would leave the window empty; its bottom is then taken from the slowest network instead.
    """
    (_, fastest_ms), (_, slowest_ms) = predictor.bounds(space)
    low, high = WINDOW[0] * min(budget_ms, slowest_ms), WINDOW[1] * budget_ms
    try:
        picked, draws = draw_in_window(space, predictor, low, high, count, seed)
    except NasError as e:
        raise NasError(f"--randoms {count}: {e}") from None
    return {"seed": seed, "window_ms": [low, high], "space_bounds_ms": [fastest_ms, slowest_ms],
            "draws": draws, "randoms": [{"arch": p["spec"].to_dict(),
                                         "predicted_ms": p["predicted_ms"], "draw": p["draw"]}
                                        for p in picked]}


def _measure_in_child(arch_dicts: list[dict], device: str, threads: int, dtype: str,
                      batches: dict[int, dict | None]) -> dict[int, list[dict]]:
    specs = [ArchSpec.from_dict(d) for d in arch_dicts]
    return {batch: [t.to_dict() for t in lutlib.measure_networks(
                specs, device, batch=batch, dtype=dtype, threads=threads,
                timing=lutlib.TimingConfig(**timing) if timing else None)]
            for batch, timing in batches.items()}


def _train_and_evaluate(workdir: Path, name: str, key: str, cfg: TrainConfig,
                        split: str | None) -> None:
    """One model of ``Stages.train_all`` in a child process."""
    stages = Stages(workdir, name, progress=False)
    stages.train(key, cfg)
    if split:
        stages.evaluate(key, cfg, split)


def measure_side_by_side(specs: list[ArchSpec], threads: int, dtype: str,
                         batches: Mapping[int, lutlib.TimingConfig | None], *,
                         device: str = "cpu") -> dict[int, list[dict]]:
    """Every network in the same interleaved rounds, at each batch (its timing, None: the
    default), in one fresh process on ``device``: a process that has just trained networks
    holds a large heap and warmed pools and reads 5-15% slower (lut.isolated)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_measure_in_child, [s.to_dict() for s in specs], device, threads,
                           dtype, {b: t.to_dict() if t else None for b, t in batches.items()}
                           ).result()


def cuda_graphs(table: lutlib.LatencyTable) -> bool:
    """Whether the table was timed as CUDA-graph replays (``nas lut build --cuda-graphs``): the
    proof's measurements then are too, so that measured and predicted mean the same thing."""
    return bool(table.meta.get("timing", {}).get("cuda_graphs"))


def check_camvid(data: str, what: str) -> None:
    """One line naming ``--data`` when it is no CamVid folder (SegNet's layout); ``what``
    names the caller ("this proof")."""
    from nas.tasks.seg import dataset_kind

    try:
        kind = dataset_kind(data)
    except NasError as e:
        raise NasError(f"--data {e}") from None
    if kind != "camvid":
        raise NasError(f"--data {data}: a {kind} folder; {what} is on CamVid (SegNet's "
                       "layout: train.txt, trainannot/, ...)")


def predicted_latency(predictor: lutlib.LatencyPredictor, spec: ArchSpec) -> float | None:
    """None for a network whose layers the table does not have (a baseline's wider stages)."""
    try:
        return predictor.latency(spec)
    except NasError:
        return None


def search_seconds(out: Path, report: dict) -> float:
    """Epoch times from the search's log plus its ranking time."""
    log_path = out / "log.jsonl"
    epochs = [json.loads(line)["seconds"] for line in log_path.read_text().splitlines()
              if line.strip()] if log_path.exists() else []
    return float(sum(epochs) + (report.get("ranking_seconds") or 0.0))


def derivation_only(space: SearchSpace, report: dict) -> ArchSpec | None:
    """The ablation: what derivation alone (EfficientPose's most probable architecture, fitted
    into the window) gave before the supernet ranked it among drawn candidates; None when the
    ranking kept it or did not run."""
    derived = [r for r in report.get("ranking") or [] if r["source"] == "derived"]
    if not derived or derived[0]["choices"] == report["arch"]["choices"]:
        return None
    return space.spec(derived[0]["choices"], f"{report['arch']['name']}-derivation-only")


def recipe_of(cfg: TrainConfig) -> dict:
    schedule, prev = [], None
    for epoch in range(cfg.epochs):
        lr = learning_rate(cfg, epoch)
        if lr != prev:
            schedule.append(f"{lr:g} from epoch {epoch + 1}")
            prev = lr
    return {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr,
            "weight_decay": cfg.weight_decay, "decay_at": list(cfg.decay_at),
            "milestones": cfg.milestones(), "decay_factor": cfg.decay_factor,
            "lr_schedule": ", ".join(schedule), "sigma": cfg.sigma, "seed": cfg.seed,
            "limit": cfg.limit}


def machine(table: lutlib.LatencyTable) -> dict:
    return {"device": describe(fingerprint(torch.device(table.device), table.threads)),
            "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__}


def compare(rows: list[dict], baseline: str, key: str, target: float) -> dict:
    """The verdict on the row ``searched``: at least ``target`` more ``key`` than ``baseline``
    at no more measured latency, and more than the best ``random-*`` row."""
    by = {r["model"]: r for r in rows}
    base, found = by[baseline], by["searched"]
    randoms = [r for r in rows if r["model"].startswith("random")]
    best = max(randoms, key=lambda r: r[key]) if randoms else None
    gain = found[key] - base[key]
    verdict = {
        f"{key}_gain_over_baseline": gain,
        f"{key}_gain_met": gain >= target,
        "latency_ratio_to_baseline": found["latency_ms"] / base["latency_ms"],
        "latency_met": found["latency_ms"] <= base["latency_ms"],
        "best_random": best["model"] if best else None,
        f"{key}_gain_over_best_random": found[key] - best[key] if best else None,
        "beats_best_random": found[key] > best[key] if best else None,
    }
    verdict["target_met"] = bool(verdict[f"{key}_gain_met"] and verdict["latency_met"]
                                 and verdict["beats_best_random"] is not False)
    return verdict


# -- the stages -------------------------------------------------------------------------------
@dataclass
class Stages:
    """The stages of one proof in ``workdir``; ``name`` prefixes its log lines."""

    workdir: Path
    name: str
    progress: bool = True

    def log(self, message: str) -> None:
        log(self.name, message)

    def pin(self, settings: dict, *, defaults: Mapping[str, object] | None = None) -> dict:
        """The settings the results depend on; a workdir keeps the ones it was started with
        (``defaults``: values of settings added since, for workdirs from before them)."""
        path = self.workdir / "settings.json"
        if not path.exists():
            write_json(path, settings)
            return settings
        pinned = {**(defaults or {}), **read_json(path)}
        differ = [k for k in settings if pinned.get(k) != settings[k]]
        if differ:
            k = differ[0]
            raise NasError(f"{path}: this workdir was started with {k}={pinned.get(k)!r}, not "
                           f"{settings[k]!r}; rerun with the same settings or choose another "
                           "--workdir")
        return settings

    def budget(self, baseline: ArchSpec, table: lutlib.LatencyTable) -> dict:
        """The baseline's latency, measured as the search measures its derived network."""
        path = self.workdir / "budget.json"
        if path.exists():
            return read_json(path)
        self.log(f"stage 1: measuring {baseline.name} at {baseline.skeleton.input_size} "
                 f"on {table.device} ({table.threads} thread(s), fresh process)")
        measured = measure_network_isolated(baseline, table.device, batch=table.batch,
                                            dtype=table.dtype, threads=table.threads,
                                            cuda_graphs=cuda_graphs(table))
        result = {"arch": baseline.to_dict(), "budget_ms": measured["median_ms"],
                  "measured": measured}
        write_json(path, result)
        return result

    def search(self, cfg: SearchConfig, lut_path: Path, *, allow_foreign: bool = False) -> dict:
        """``nas.search.search`` with ``cfg`` into ``search/``, or the search there continued
        (``allow_foreign``: with a table of another device, as ``--allow-foreign-lut``)."""
        out = self.workdir / "search"
        if (out / "report.json").exists():
            return read_json(out / "report.json")
        t0 = time.perf_counter()
        if (out / "checkpoint.pt").exists() or (out / "strategy.json").exists():
            self.log(f"stage 2: continuing the search in {out}")
            report = search(None, out, lut=str(lut_path), resume=True, progress=self.progress,
                            allow_foreign_lut=allow_foreign)
        else:
            self.log(f"stage 2: searching {cfg.space} on {cfg.data} (train split), budget "
                     f"{cfg.budget_ms:.3f} ms, {cfg.epochs} epochs")
            report = search(cfg, out, lut=str(lut_path), progress=self.progress,
                            allow_foreign_lut=allow_foreign)
        if report.get("status") == "interrupted":
            raise Interrupted(f"search stopped; checkpoint in {out}")
        measured = report.get("measured_ms")
        # a table of another device (allow_foreign) is not checked by measurement
        self.log(f"stage 2: derived {report['arch']['name']}: predicted "
                 f"{report['predicted_ms']:.3f} ms, "
                 + (f"measured {measured:.3f} ms" if measured is not None else "not measured")
                 + f" ({time.perf_counter() - t0:.0f} s)")
        return report

    def randoms(self, space: SearchSpace, predictor: lutlib.LatencyPredictor, budget_ms: float,
                count: int, seed: int) -> dict:
        path = self.workdir / "randoms.json"
        if path.exists():
            return read_json(path)
        result = draw_randoms(space, predictor, budget_ms, count, seed)
        self.log(f"stage 3: {count} random networks in {result['window_ms'][0]:.3f} to "
                 f"{result['window_ms'][1]:.3f} ms predicted, after {result['draws']} draws")
        write_json(path, result)
        return result

    def train(self, key: str, cfg: TrainConfig) -> dict:
        """``nas.train.train`` with ``cfg`` into ``train/<key>``, or the run there continued
        (with ``cfg.workers``)."""
        out = self.workdir / "train" / key
        if (out / "metrics.json").exists():
            return read_json(out / "metrics.json")
        t0 = time.perf_counter()
        spec = cfg.spec
        if (out / "resume.pt").exists():
            self.log(f"stage 4: continuing training of {key} ({spec.name}) in {out}")
            report = train(None, out, resume=True, arch=spec, workers=cfg.workers,
                           progress=self.progress)
        else:
            self.log(f"stage 4: training {key} ({spec.name}) for {cfg.epochs} epochs into {out}")
            report = train(cfg, out, progress=self.progress)
        if report.get("status") == "interrupted":
            raise Interrupted(f"training of {key} stopped; checkpoint in {out}")
        self.log(f"stage 4: {key}: {report['final']['metric']} {report['final']['mean']:.2f} "
                 f"({time.perf_counter() - t0:.0f} s)")
        return report

    def train_all(self, configs: Mapping[str, TrainConfig], split: str | None, *,
                  jobs: int = 1) -> tuple[dict[str, dict], dict[str, dict]]:
        """``train`` then ``evaluate`` on ``split`` (None: no evaluation) for every model of
        ``configs``: its training reports and scores, by key. ``jobs`` > 1 runs up to that many
        models at once, each in a fresh process (on a GPU that networks this small leave mostly
        idle, or on CPU cores one model's threads do not fill; each one's data loading has its
        own ``cfg.workers`` processes), without progress bars; every model continues or is
        skipped as in a serial run, so a rerun picks up what is left."""
        done = f"{split}.json" if split else "metrics.json"
        todo = {k: c for k, c in configs.items()
                if not (self.workdir / "train" / k / done).exists()}
        if jobs > 1 and len(todo) > 1:
            # made here, once: the children's checks would otherwise make and remove the shared
            # parent folder under each other
            (self.workdir / "train").mkdir(parents=True, exist_ok=True)
            ctx = multiprocessing.get_context("spawn")
            width = min(jobs, len(todo))
            waiting, running = list(todo.items()), set()
            with ProcessPoolExecutor(width, mp_context=ctx) as pool:
                # never more submitted than run: after Ctrl-C, or a child stopped or failed,
                # no other model starts (a queued one would, as the pool shuts down); the
                # running ones stop at their own Ctrl-C, or finish, and are kept
                while waiting or running:
                    while waiting and len(running) < width:
                        key, cfg = waiting.pop(0)
                        running.add(pool.submit(_train_and_evaluate, self.workdir, self.name,
                                                key, cfg, split))
                    finished, running = wait(running, return_when=FIRST_COMPLETED)
                    for f in finished:
                        f.result()      # a child's Interrupted or NasError surfaces here
        trained, tested = {}, {}
        for key, cfg in configs.items():
            trained[key] = self.train(key, cfg)
            if split:
                tested[key] = self.evaluate(key, cfg, split)
        return trained, tested

    def evaluate(self, key: str, cfg: TrainConfig, split: str) -> dict:
        """The last model of ``train/<key>`` scored on ``split`` of ``cfg.data`` (at most
        ``cfg.limit`` images), single pass: ``train/<key>/<split>.json``."""
        from nas.checkpoint import load_model_checkpoint
        from nas.tasks import get_task

        out = self.workdir / "train" / key
        path = out / f"{split}.json"
        if path.exists():
            return read_json(path)
        task = get_task(cfg.task)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        t0 = time.perf_counter()
        spec, model, _ = load_model_checkpoint(out / "last.pt")
        dataset = task.make_dataset(cfg.data, split, spec.skeleton, seed=cfg.seed, augment=False,
                                    limit=cfg.limit,
                                    **task.reader_options(cfg, validation=True))
        model = model.to(torch.device(cfg.device), memory_format=torch.channels_last)
        result = task.evaluate_model(model, dataset, batch_size=cfg.batch_size,
                                     device=cfg.device, num_workers=cfg.workers,
                                     progress=self.progress)
        result = {**result, "split": split, "checkpoint": str(out / "last.pt"),
                  "seconds": time.perf_counter() - t0}
        write_json(path, result)
        self.log(f"stage 4: {key}: {result['metric']} {result['mean']:.2f} on {split}")
        return result

    def latency(self, models: dict[str, ArchSpec], table: lutlib.LatencyTable, *,
                batches: Mapping[int, lutlib.TimingConfig] | None = None) -> dict:
        """Every model in the same interleaved rounds in one fresh process
        (``measure_side_by_side``) at the table's batch, dtype and threads; and, per ``batches``
        (batch -> timing), at further batch sizes: ``batches[str(batch)]``, whole-batch times."""
        path = self.workdir / "latency.json"
        choices = {k: dict(s.choices) for k, s in models.items()}
        extra = dict(batches or {})
        if path.exists():
            done = read_json(path)
            if done.get("choices") == choices and \
                    {str(b) for b in extra} <= set(done.get("batches", {})):
                return done
            self.log(f"stage 5: {path} measured other networks; measuring again")
        self.log(f"stage 5: measuring {len(models)} networks side by side on {table.device} "
                 f"({table.threads} thread(s))")
        timing = lutlib.TimingConfig(cuda_graphs=cuda_graphs(table))
        extra = {b: dataclasses.replace(t or lutlib.TimingConfig(),
                                        cuda_graphs=timing.cuda_graphs)
                 for b, t in extra.items()}
        measured = measure_side_by_side(list(models.values()), table.threads, table.dtype,
                                        {table.batch: timing, **extra}, device=table.device)
        result = {"device": table.device, "threads": table.threads, "batch": table.batch,
                  "dtype": table.dtype, "timing": timing.to_dict(),
                  "choices": choices,
                  "timings": dict(zip(models, measured[table.batch], strict=True))}
        if extra:
            result["batches"] = {str(b): {"timing": t.to_dict(),
                                          "timings": dict(zip(models, measured[b], strict=True))}
                                 for b, t in extra.items()}
        write_json(path, result)
        return result


def run_main(name: str, run: Callable[[argparse.Namespace], dict], args: argparse.Namespace,
             render: Callable[[dict], str], *, print_json: bool = False) -> int:
    """``run(args)``, then the report written to ``args.out`` (markdown from ``render``, the
    JSON beside it) and printed (the JSON, on one line, with ``print_json``). Exit status: 0;
    130 after Ctrl-C (finished stages kept); 2 with one line for a ``NasError``."""
    try:
        report = run(args)
    except Interrupted as e:
        log(name, f"{e}; run the same command again to continue")
        return 130
    except KeyboardInterrupt:
        log(name, "interrupted; finished stages are kept: run the same command again to continue")
        return 130
    except NasError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    write_atomic(out.with_suffix(".json"), json.dumps(report, indent=2, default=str) + "\n")
    markdown = render(report)
    write_atomic(out, markdown)
    log(name, f"wrote {out} and {out.with_suffix('.json')}")
    print(json.dumps(report, default=str) if print_json else markdown)
    return 0


def yes(ok: bool) -> str:
    return "met" if ok else "**NOT met**"


def verdict_lines(rows: list[dict], v: dict, *, key: str, label: str, baseline: str,
                  target: float) -> list[str]:
    """The verdict's lines: searched vs ``baseline`` and vs the best random network by the
    rows' ``key`` (pck, miou; the verdict's ``{key}_gain_*`` fields), printed as ``label``."""
    by = {r["model"]: r for r in rows}
    base, found = by[baseline], by["searched"]
    lines = [
        (f"- searched - {baseline}: {v[f'{key}_gain_over_baseline']:+.2f} {label} "
         f"({found[key]:.2f} vs {base[key]:.2f}; target >= +{target:.1f}): "
         f"{yes(v[f'{key}_gain_met'])}"),
        (f"- latency: searched {found['latency_ms']:.3f} ms vs {baseline} "
         f"{base['latency_ms']:.3f} ms (x{v['latency_ratio_to_baseline']:.3f}; target: no "
         f"more): {yes(v['latency_met'])}"),
    ]
    if ABLATION in by:
        ab = by[ABLATION]
        lines.append(f"- ablation, outside the verdict: {ABLATION} {ab[key]:.2f} at "
                     f"{ab['latency_ms']:.3f} ms, {ab[key] - base[key]:+.2f} over "
                     f"{baseline}, {ab[key] - found[key]:+.2f} over the searched network")
    if v["best_random"]:
        best = by[v["best_random"]]
        lines.append(f"- best random: {best['model']} {best[key]:.2f}; searched - best random "
                     f"{v[f'{key}_gain_over_best_random']:+.2f}: {yes(v['beats_best_random'])}")
        values = [r[key] for r in rows if r["model"].startswith("random")]
        lines.append(f"- the {len(values)} random networks: mean {np.mean(values):.2f}, "
                     f"{min(values):.2f} to {max(values):.2f}, one training run each")
    return lines
