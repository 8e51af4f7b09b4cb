"""The pose ground truth: networks of one space trained with one recipe, one row each.

NAS-Bench-101/201 gave the field a table of trained networks against which a search, a proxy or a
supernet is scored in minutes. This is ours, for the pose search at LSP's preset:

* **networks**: the 8 networks the LSP proof trained (``results/benchmarks/pose_proof_runs``:
  mobilenetv2, the searched network, the derivation-only ablation and its 5 random networks) and
  random networks of the proof's space drawn as the proof drew its own: architectures sampled
  uniformly (every choice uniform, ``SearchSpace.sample``) from a generator seeded with the
  proof's seed, kept when the proof's latency table predicts them inside the proof's window
  (0.85 to 1.0 x mobilenetv2's latency as the proof measured it), in draw order. With the proof's
  seed the first five kept draws *are* the proof's random networks (checked), so the table
  continues the proof's sequence: ``random-6`` onwards are new. The proof's table predicts the
  machine that built it; it is used here as a fixed, committed rule for the draw, not as this
  machine's latency, which is measured (below);
* **recipe**: one for all (``nas.train.RECIPES['posebench']``: the proof's recipe for 12
  epochs), one thread per network, data in the training process;
* **per network** (``networks/<key>.json``, written when its training ends): PCK@0.2 with and
  without flip test on LSP's 1000 test images, per joint, the training loss per epoch, seconds;
  or ``failed`` with the reason (a loss that became NaN). A run killed half-way keeps the
  network's checkpoint (``<workdir>/<key>/resume.pt``, every epoch) and continues from it;
* **latency**: every trained network, and mobilenetv2, measured side by side in interleaved
  rounds in one fresh process after training (``latency.json``), with the load average seen;
* **table** (``table.parquet``, ``table.csv``), ``summary.json`` and ``README.md``.

Settings that decide the numbers are pinned in ``settings.json``; a rerun with other settings is
refused rather than mixed in.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import platform
import signal
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from supernets.errors import NasError
from supernets.fileio import write_atomic
from supernets.spec import ArchSpec

__all__ = [
    "PROOF_KEYS",
    "BenchSettings",
    "Entry",
    "entries",
    "load_results",
    "load_table",
    "measure",
    "report",
    "train_all",
]

REPO = Path(__file__).resolve().parents[2]
PROOF_RUNS = REPO / "results" / "benchmarks" / "pose_proof_runs"
PROOF_KEYS = ("mobilenetv2", "searched", "searched-derivation-only",
              "random-1", "random-2", "random-3", "random-4", "random-5")
RESULT_FORMAT = "nas.posebench/1"
MAX_DRAWS = 200_000


def _rel(path: Path) -> str:
    """A path as recorded in the results: relative to the repository when inside it."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def read_json(path: Path, what: str) -> dict:
    """A JSON object, or a one-line error naming ``path`` and what it should have been."""
    try:
        obj = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise NasError(f"{path}: missing ({what})") from None
    except (OSError, ValueError) as e:
        raise NasError(f"{path}: unreadable {what} ({type(e).__name__}: "
                       f"{' '.join(str(e).split())[:120]}); delete it to redo it") from None
    if not isinstance(obj, dict):
        raise NasError(f"{path}: expected a JSON object ({what})")
    return obj


def write_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


# -- settings -----------------------------------------------------------------------------------
@dataclass
class BenchSettings:
    """What the numbers depend on; pinned in ``settings.json`` by the first run."""

    data: str
    space: str = "efficientpose-a"
    preset: str = "lsp"
    proof: str = _rel(PROOF_RUNS)        # the proof's stage outputs: networks, budget, PCK
    table: str = ""                      # the proof's latency table (the draw's rule)
    budget_ms: float = 0.0               # mobilenetv2 as the proof measured it
    window: tuple[float, float] = (0.85, 1.0)
    seed: int = 0
    randoms: int = 45                    # kept draws, the proof's five included
    recipe: str = "posebench"
    recipe_settings: dict = field(default_factory=dict)
    batch_size: int = 32
    limit: int | None = None             # smoke runs only: at most N train and test images

    def __post_init__(self):
        self.window = tuple(self.window)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def window_ms(self) -> tuple[float, float]:
        return self.window[0] * self.budget_ms, self.window[1] * self.budget_ms

    def train_config(self, arch: dict, threads: int = 1):
        from nas.train import TrainConfig

        return TrainConfig(arch=arch, data=self.data, batch_size=self.batch_size,
                           seed=self.seed, limit=self.limit, threads=threads, workers=0,
                           **self.recipe_settings)


def proof_settings(data: str | Path, *, proof: Path = PROOF_RUNS, randoms: int = 45,
                   recipe: str = "posebench", epochs: int | None = None,
                   limit: int | None = None) -> BenchSettings:
    """The settings that continue the proof in ``proof``: its space, table, budget and seed."""
    from nas.train import recipe as named_recipe

    data = Path(data)
    if not (data / "joints.mat").is_file() or not (data / "images").is_dir():
        raise NasError(f"--data {data}: no LSP folder there (expected joints.mat and images/; "
                       "see ../shared/data/lsp/README.md)")
    pinned = read_json(proof / "settings.json", "the proof's pinned settings")
    budget = read_json(proof / "budget.json", "the proof's budget stage")
    table = Path(pinned["lut"])
    if not table.is_file():   # recorded as an absolute path on the proof's machine
        table = REPO / "results" / "lut" / table.parent.name / table.name
    settings = named_recipe(recipe)
    if epochs is not None:
        settings["epochs"] = epochs
    return BenchSettings(data=str(data.resolve()), space=pinned["space"], proof=_rel(proof),
                         table=_rel(table), budget_ms=float(budget["budget_ms"]),
                         seed=int(pinned["seed"]), randoms=randoms, recipe=recipe,
                         recipe_settings=settings, batch_size=int(pinned["batch_size"]),
                         limit=limit)


def read_settings(out: Path) -> BenchSettings:
    """The settings a table was built with (its ``settings.json``); one line when missing."""
    return BenchSettings(**read_json(Path(out) / "settings.json", "the posebench settings"))


def pin(out: Path, settings: BenchSettings) -> None:
    """Write ``settings.json``, or refuse settings other than the ones pinned there."""
    path = out / "settings.json"
    mine = json.loads(json.dumps(settings.to_dict()))
    if path.exists():
        pinned = read_json(path, "the benchmark's pinned settings")
        for key, value in mine.items():
            if key == "randoms" and pinned.get(key, 0) <= value:
                continue   # more draws extend the table; the first ones stay what they were
            if pinned.get(key) != value:
                raise NasError(f"{path}: this table was started with {key}={pinned.get(key)!r}, "
                               f"not {value!r}; rerun with the same settings or choose another "
                               "--out")
        if pinned.get("randoms") != mine["randoms"]:
            write_json(path, mine)
    else:
        write_json(path, mine)


# -- the networks -------------------------------------------------------------------------------
@dataclass
class Entry:
    key: str
    spec: ArchSpec
    source: str                     # "proof" (trained by the proof) or "draw"
    draw: int | None = None         # index among all draws (accepted or not), 1-based
    predicted_ms: float | None = None   # by the proof's table (None: not a network of the space)
    pck_proof: float | None = None  # the proof's 30-epoch PCK@0.2 (proof networks)
    pck_proof_flip: float | None = None

    @property
    def in_proof(self) -> bool:
        return self.pck_proof is not None


def _load_table(settings: BenchSettings):
    import lut as lutlib

    path = REPO / settings.table if not Path(settings.table).is_absolute() else \
        Path(settings.table)
    # the proof's table is the draw's committed rule, not a claim about this machine
    return lutlib.LatencyPredictor(lutlib.LatencyTable.load(path, allow_foreign=True))


def draw_in_window(space, predictor, low: float, high: float, count: int, seed: int,
                   *, prefix: str = "random") -> tuple[list[dict], int]:
    """The first ``count`` uniform draws of ``space`` whose predicted latency lies in
    [low, high]: ``({"spec", "predicted_ms", "draw"}, ...), draws made``."""
    rng = np.random.default_rng(seed)
    picked, draws = [], 0
    while len(picked) < count:
        if draws >= MAX_DRAWS:
            raise NasError(f"only {len(picked)} of {MAX_DRAWS} random networks of {space.name} "
                           f"predict {low:.3f} to {high:.3f} ms (asked for {count})")
        draws += 1
        spec = space.sample(rng, name=f"{prefix}-{len(picked) + 1}")
        ms = predictor.latency(spec)
        if low <= ms <= high:
            picked.append({"spec": spec, "predicted_ms": ms, "draw": draws})
    return picked, draws


def _proof_pck(proof: Path, key: str) -> tuple[float, float]:
    m = read_json(proof / "train" / key / "metrics.json", f"the proof's training of {key}")
    return float(m["final"]["mean"]), float(m["final_flip"]["mean"])


def entries(settings: BenchSettings) -> tuple[list[Entry], dict]:
    """Every network of the table, the proof's first, and how the draw went."""
    from supernets.space import get_space

    proof = REPO / settings.proof if not Path(settings.proof).is_absolute() else \
        Path(settings.proof)
    space = get_space(settings.space, preset=settings.preset)
    predictor = _load_table(settings)
    low, high = settings.window_ms
    drawn, draws = draw_in_window(space, predictor, low, high, settings.randoms, settings.seed)

    def predicted(spec: ArchSpec) -> float | None:
        try:
            return predictor.latency(spec)
        except NasError:   # mobilenetv2's wider stages are not in the space
            return None

    budget = read_json(proof / "budget.json", "the proof's budget stage")
    search = read_json(proof / "search" / "report.json", "the proof's search report")
    randoms = read_json(proof / "randoms.json", "the proof's random draws")
    specs = {"mobilenetv2": ArchSpec.from_dict(budget["arch"], where="budget.json"),
             "searched": ArchSpec.from_dict(search["arch"], where="search/report.json")}
    derived = [r for r in search.get("ranking") or [] if r["source"] == "derived"]
    if derived and derived[0]["choices"] != search["arch"]["choices"]:
        specs["searched-derivation-only"] = space.spec(
            derived[0]["choices"], f"{search['arch']['name']}-derivation-only")
    for i, r in enumerate(randoms["randoms"]):
        specs[f"random-{i + 1}"] = ArchSpec.from_dict(r["arch"], where="randoms.json")
    out: list[Entry] = []
    for key, spec in specs.items():
        pck, flip = _proof_pck(proof, key)
        out.append(Entry(key, spec, "proof", predicted_ms=predicted(spec), pck_proof=pck,
                         pck_proof_flip=flip))
    proof_randoms = {e.key: e for e in out if e.key.startswith("random-")}
    for i, d in enumerate(drawn):
        key = f"random-{i + 1}"
        if key in proof_randoms:
            e = proof_randoms[key]
            if dict(e.spec.choices) != dict(d["spec"].choices):
                raise NasError(f"{proof / 'randoms.json'}: {key} is not the draw this seed "
                               f"gives; the draw rule has changed since the proof")
            e.draw = d["draw"]
            continue
        out.append(Entry(key, d["spec"], "draw", draw=d["draw"], predicted_ms=d["predicted_ms"]))
    how = {"rule": "uniform choices per layer (SearchSpace.sample), kept when the proof's table "
                   "predicts the window; first kept draws in order",
           "seed": settings.seed, "table": settings.table, "budget_ms": settings.budget_ms,
           "window": list(settings.window), "window_ms": [low, high], "kept": len(drawn),
           "draws": draws, "acceptance": len(drawn) / draws,
           "space_bounds_ms": [ms for _, ms in predictor.bounds(space)]}
    return out, how


# -- training -----------------------------------------------------------------------------------
def result_path(out: Path, key: str) -> Path:
    return out / "networks" / f"{key}.json"


def load_results(out: Path, settings: BenchSettings) -> dict[str, dict]:
    """Finished networks (``networks/<key>.json``); a damaged file is a one-line error."""
    done = {}
    folder = out / "networks"
    if not folder.is_dir():
        return done
    for path in sorted(folder.glob("*.json")):
        r = read_json(path, "a posebench result")
        missing = [k for k in ("format", "key", "arch", "status", "recipe") if k not in r]
        if missing or r["format"] != RESULT_FORMAT:
            what = ", ".join(missing) or f"format {RESULT_FORMAT}"
            raise NasError(f"{path}: not a posebench result (missing {what}); delete it to "
                           "train the network again")
        if r["recipe"] != settings.recipe_settings:
            raise NasError(f"{path}: trained with recipe {r['recipe']}, not the table's "
                           f"{settings.recipe_settings}; delete it to train the network again")
        if r["status"] == "complete" and not isinstance(r.get("pck"), (int, float)):
            raise NasError(f"{path}: complete but without a PCK; delete it to train again")
        done[r["key"]] = r
    return done


def _quiet_child() -> None:
    """Worker initialiser: one thread, and out of the terminal's process group, so that Ctrl-C
    reaches workers once, forwarded by the parent (``train_all``)."""
    os.setsid()
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)


def _train_one(key: str, arch: dict, settings: dict, run_dir: str) -> dict:
    """Train one network in a worker process; its log goes to ``run_dir/train.log``."""
    from nas.train import TrainingDiverged, train

    s = BenchSettings(**settings)
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    spec = ArchSpec.from_dict(arch, where=key)
    t0 = time.perf_counter()
    with open(run / "train.log", "a", buffering=1) as log:
        saved = sys.stderr
        sys.stderr = log
        try:
            if _resumable(run, s.train_config(arch).to_dict()):
                report = train(None, run, resume=True, arch=spec, workers=0, progress=False)
            else:
                report = train(s.train_config(arch), run, progress=False, force=True)
        except TrainingDiverged as e:
            return {"status": "failed", "reason": str(e),
                    "seconds_wall": time.perf_counter() - t0}
        finally:
            sys.stderr = saved
    if report.get("status") == "interrupted":
        return {"status": "interrupted", "epoch": report["epoch"]}
    history = report["history"]
    return {"status": "complete", "pck": report["final"]["mean"],
            "pck_flip": report["final_flip"]["mean"], "metric": report["final"]["metric"],
            "test_samples": report["final"]["samples"], "per_joint": report["final"]["per_joint"],
            "per_joint_flip": report["final_flip"]["per_joint"],
            "train_loss": [h["train_loss"] for h in history],
            "train_seconds": sum(h["seconds"] for h in history),
            "seconds_wall": time.perf_counter() - t0}


def _resumable(run: Path, config: dict) -> bool:
    """Whether ``run`` holds a checkpoint of this very training run (same recipe, data, arch);
    one of another table (another recipe, a smoke run) is started afresh instead."""
    import torch

    path = run / "resume.pt"
    if not path.is_file():
        return False
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        theirs = dict(state["config"])
    except Exception:  # noqa: BLE001  a damaged checkpoint: train again from the start
        print(f"posebench: {path} unreadable; training from the start", file=sys.stderr)
        return False
    ignore = ("threads", "workers")
    theirs = json.loads(json.dumps(theirs, default=str))   # tuples as lists on both sides
    same = all(theirs.get(k) == v for k, v in json.loads(json.dumps(config)).items()
               if k not in ignore)
    if not same:
        print(f"posebench: {path} is another run's (other settings); training from the start",
              file=sys.stderr)
    return same


def _record(out: Path, entry: Entry, settings: BenchSettings, outcome: dict) -> dict:
    import torch

    from lut.fingerprint import describe, fingerprint

    row = {"format": RESULT_FORMAT, "key": entry.key, "arch": entry.spec.to_dict(),
           "source": entry.source, "recipe": settings.recipe_settings, **outcome,
           "machine": describe(fingerprint(torch.device("cpu"), 1)),
           "torch": torch.__version__, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json(result_path(out, entry.key), row)
    return row


def train_all(out: Path, workdir: Path, settings: BenchSettings, todo: list[Entry], *,
              workers: int = 1, log: Callable[[str], None] = print) -> str:
    """Train ``todo`` (in order), ``workers`` at once, one thread each; each network's result
    is written as soon as it ends. Returns ``"complete"`` or ``"interrupted"``: the first Ctrl-C
    or SIGTERM is forwarded once to every worker (they live in their own sessions), which saves
    its checkpoint at the next step and stops; a second one aborts at once."""
    if not todo:
        return "complete"
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_quiet_child)
    pending, running = list(todo), {}
    started, finished, t0 = {}, 0, time.perf_counter()
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        if stopping:
            raise KeyboardInterrupt
        stopping = True
        log(f"stopping: {len(running)} network(s) in training save a checkpoint at the next "
            "step (again to abort at once)")
        for proc in list(getattr(pool, "_processes", {}).values()):
            try:
                os.kill(proc.pid, signal.SIGINT)
            except OSError:
                pass

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while (pending and not stopping) or running:
            while pending and len(running) < workers and not stopping:
                e = pending.pop(0)
                run_dir = workdir / e.key
                state = "continuing" if (run_dir / "resume.pt").is_file() else "training"
                log(f"{state} {e.key} ({e.source}, predicted {_ms(e.predicted_ms)}) in "
                    f"{run_dir}")
                fut = pool.submit(_train_one, e.key, e.spec.to_dict(), settings.to_dict(),
                                  str(run_dir))
                running[fut], started[e.key] = e, time.perf_counter()
            done, _ = wait(list(running), timeout=1.0, return_when=FIRST_COMPLETED)
            for fut in done:
                e = running.pop(fut)
                outcome = fut.result()
                if outcome["status"] == "interrupted":
                    log(f"{e.key}: stopped in epoch {outcome['epoch'] + 1}; checkpoint kept")
                    continue
                _record(out, e, settings, outcome)
                finished += 1
                left = len(pending) + len(running)
                per_network = (time.perf_counter() - t0) / finished
                what = (f"PCK@0.2 {outcome['pck']:.2f} (flip {outcome['pck_flip']:.2f})"
                        if outcome["status"] == "complete" else f"FAILED: {outcome['reason']}")
                log(f"{e.key}: {what}, {time.perf_counter() - started[e.key]:.0f} s; "
                    f"{finished} done in this run, {left} to go"
                    + (f", about {per_network * left / 60:.0f} min left" if left else ""))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        pool.shutdown(wait=True, cancel_futures=True)
    return "interrupted" if stopping else "complete"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} ms"


# -- latency ------------------------------------------------------------------------------------
def _measure_child(arch_dicts: list[dict], threads: int) -> list[dict]:
    import lut as lutlib

    specs = [ArchSpec.from_dict(d) for d in arch_dicts]
    return [t.to_dict() for t in lutlib.measure_networks(specs, "cpu", threads=threads)]


def measure(out: Path, specs: dict[str, ArchSpec], *, threads: int = 1,
            log: Callable[[str], None] = print) -> dict:
    """Every network side by side (interleaved rounds) in one fresh process; kept in
    ``latency.json`` and measured again only when the set of networks changes."""
    import torch

    import lut as lutlib
    from lut.fingerprint import describe, fingerprint

    path = out / "latency.json"
    choices = {k: dict(s.choices) for k, s in specs.items()}
    if path.exists():
        done = read_json(path, "the side-by-side latency")
        if done.get("choices") == choices and done.get("threads") == threads:
            return done
    log(f"measuring {len(specs)} networks side by side in a fresh process ({threads} thread(s), "
        f"{lutlib.TimingConfig().rounds} interleaved rounds)")
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        timings = pool.submit(_measure_child, [s.to_dict() for s in specs.values()],
                              threads).result()
    result = {"device": describe(fingerprint(torch.device("cpu"), threads)),
              "threads": threads, "batch": 1, "dtype": "fp32",
              "timing": lutlib.TimingConfig().to_dict(), "load_average_before": load_before,
              "load_average_after": os.getloadavg(), "seconds": time.perf_counter() - t0,
              "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "choices": choices,
              "timings": dict(zip(specs, timings, strict=True))}
    write_json(path, result)
    return result


# -- the table and its report -------------------------------------------------------------------
def _complexities(out: Path | None, all_entries: Iterable[Entry]) -> dict[str, tuple[int, int]]:
    """MACs and parameters per network, cached in ``complexity.json`` (counting them takes
    seconds per network on a busy 2-core machine)."""
    from supernets.flops import complexity

    path = out / "complexity.json" if out is not None else None
    cache = read_json(path, "the MACs cache") if path is not None and path.exists() else {}
    changed = False
    result = {}
    for e in all_entries:
        tag = json.dumps(dict(e.spec.choices), sort_keys=True) + str(e.spec.skeleton)
        hit = cache.get(e.key)
        if not hit or hit.get("tag") != tag:
            c = complexity(e.spec)
            hit = cache[e.key] = {"tag": tag, "macs": c.macs, "params": c.params}
            changed = True
        result[e.key] = (hit["macs"], hit["params"])
    if changed and path is not None:
        write_json(path, cache)
    return result


def rows(all_entries: Iterable[Entry], results: dict[str, dict], latency: dict | None,
         out: Path | None = None) -> list:
    all_entries = list(all_entries)
    counts = _complexities(out, all_entries)
    timings = (latency or {}).get("timings", {})
    base = timings.get("mobilenetv2", {}).get("median_ms")
    out = []
    for e in all_entries:
        r = results.get(e.key)
        macs, params = counts[e.key]
        t = timings.get(e.key) if r and r["status"] == "complete" else None
        ms = t["median_ms"] if t else None
        out.append({
            "key": e.key, "source": e.source, "in_proof": e.in_proof, "draw": e.draw,
            "status": r["status"] if r else "pending",
            "reason": r.get("reason") if r else None,
            "pck": r.get("pck") if r else None, "pck_flip": r.get("pck_flip") if r else None,
            "pck_proof_30ep": e.pck_proof, "pck_proof_30ep_flip": e.pck_proof_flip,
            "predicted_ms_proof_table": e.predicted_ms,
            "latency_ms": ms, "latency_p10_ms": t["p10_ms"] if t else None,
            "latency_p90_ms": t["p90_ms"] if t else None,
            "latency_ratio_mobilenetv2": ms / base if ms and base else None,
            "macs": macs, "params": params,
            "train_seconds": r.get("train_seconds") if r else None,
            "arch": json.dumps(e.spec.to_dict(), sort_keys=True),
        })
    return out


def write_table(out: Path, table_rows: list[dict]) -> None:
    import io

    import pandas as pd

    df = pd.DataFrame(table_rows)
    buffer = io.BytesIO()
    df.to_parquet(buffer, index=False)
    write_atomic(out / "table.parquet", buffer.getvalue())
    write_atomic(out / "table.csv", df.to_csv(index=False))


def load_table(out: str | Path = REPO / "results" / "posebench"):
    """The committed ground truth as a DataFrame (one row per network; ``arch`` is the spec's
    JSON): what a search, a proxy or a supernet is scored against."""
    import pandas as pd

    path = Path(out) / "table.parquet"
    try:
        return pd.read_parquet(path)
    except FileNotFoundError:
        raise NasError(f"{path}: no posebench table (run benchmarks/posebench.py)") from None
    except (OSError, ValueError) as e:
        raise NasError(f"{path}: unreadable posebench table ({type(e).__name__})") from None


def window_rows(table, settings: BenchSettings):
    """The table's finished networks that the proof's table predicts inside the window: the
    population a search's pick is placed among."""
    low, high = settings.window_ms
    return table[(table["status"] == "complete")
                 & table["predicted_ms_proof_table"].between(low, high)]


def recipe_check(table_rows: list[dict]) -> dict:
    """The short recipe's PCK against the proof's 30-epoch PCK on the networks both trained."""
    from nas.bench.stats import rank_agreement

    shared = [r for r in table_rows if r["in_proof"] and r["status"] == "complete"]
    agreement = rank_agreement([r["pck_proof_30ep"] for r in shared],
                               [r["pck"] for r in shared])
    in_space = [r for r in shared if r["predicted_ms_proof_table"] is not None]
    space_only = rank_agreement([r["pck_proof_30ep"] for r in in_space],
                                [r["pck"] for r in in_space])
    return {"networks": [r["key"] for r in shared], **agreement,
            "space_only": {"networks": [r["key"] for r in in_space], **space_only},
            "short": [r["pck"] for r in shared], "long": [r["pck_proof_30ep"] for r in shared],
            "target_tau": 0.6,
            "met": bool(agreement["n"] == len(PROOF_KEYS)
                        and agreement["kendall_tau"] >= 0.6)}


def report(out: Path, settings: BenchSettings, all_entries: list[Entry], how: dict,
           results: dict[str, dict], latency: dict | None, *, command: str,
           invocation: dict | None) -> dict:
    """Write table.parquet/.csv, summary.json and README.md; returns the summary."""
    import torch

    table_rows = rows(all_entries, results, latency, out)
    write_table(out, table_rows)
    invocations = _append_invocation(out, invocation)
    complete = [r for r in table_rows if r["status"] == "complete"]
    drawn = [r for r in complete if r["draw"] is not None]
    pcks = np.array([r["pck"] for r in drawn]) if drawn else np.array([])
    low, high = how["window_ms"]
    summary = {
        "what": "pose ground truth: networks of the proof's space at LSP's preset trained with "
                "one recipe",
        "command": command, "settings": settings.to_dict(), "draw": how,
        "networks": len(table_rows), "complete": len(complete),
        "failed": [r["key"] for r in table_rows if r["status"] == "failed"],
        "pending": [r["key"] for r in table_rows if r["status"] == "pending"],
        "drawn_complete": len(drawn),
        "pck_drawn": ({"mean": float(pcks.mean()), "std": float(pcks.std(ddof=1))
                       if len(pcks) > 1 else None, "min": float(pcks.min()),
                       "max": float(pcks.max())} if len(pcks) else None),
        "recipe_check": recipe_check(table_rows),
        "latency": ({k: v for k, v in latency.items() if k not in ("choices", "timings")}
                    if latency else None),
        "measured_in_window": (sum(1 for r in drawn if r["latency_ratio_mobilenetv2"] is not None
                                   and 0.85 <= r["latency_ratio_mobilenetv2"] <= 1.0)
                               if latency else None),
        "drawn_measured": sum(1 for r in drawn if r["latency_ratio_mobilenetv2"] is not None),
        "train_seconds": sum(r["train_seconds"] or 0 for r in complete),
        "invocations": invocations,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__},
        "predicted_window_ms": [low, high],
    }
    write_json(out / "summary.json", summary)
    write_atomic(out / "README.md", render(summary, table_rows))
    return summary


def _append_invocation(out: Path, invocation: dict | None) -> list[dict]:
    """The runs that trained or measured so far, ``invocation`` appended (None: a report only,
    which is not a run)."""
    path = out / "invocations.json"
    past = read_json(path, "the list of runs").get("runs", []) if path.exists() else []
    if invocation is None:
        return past
    runs = past + [invocation]
    write_json(path, {"runs": runs})
    return runs


def _f(value, fmt: str = ".2f") -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else \
        format(value, fmt)


def render(summary: dict, table_rows: list[dict]) -> str:
    s, how, rc = summary["settings"], summary["draw"], summary["recipe_check"]
    recipe = s["recipe_settings"]
    epochs = recipe.get("epochs")
    wall = sum(r.get("seconds", 0) for r in summary["invocations"])
    lat = summary["latency"]
    lines = [
        "# posebench: the pose ground truth (LSP, efficientpose-a at 128x128)", "",
        f"Command: `{summary['command']}` (run again to continue; `--workers 2` trains two "
        "networks at once, one thread each).", "",
        f"Status: **{summary['complete']} of {summary['networks']} networks trained**"
        + (f", {len(summary['failed'])} failed ({', '.join(summary['failed'])})"
           if summary["failed"] else "")
        + (f"; pending: {len(summary['pending'])}" if summary["pending"] else "") + ".", "",
        "## How the networks were chosen", "",
        (f"The proof's 8 networks (`{s['proof']}`), and random networks of `{s['space']}` drawn "
         f"as the proof drew its own: {how['rule']}; seed {how['seed']}, window "
         f"{how['window'][0]:g} to {how['window'][1]:g} x mobilenetv2's latency as the proof "
         f"measured it ({how['budget_ms']:.3f} ms), i.e. {how['window_ms'][0]:.3f} to "
         f"{how['window_ms'][1]:.3f} ms predicted by the proof's table `{how['table']}` (the "
         "space spans "
         f"{how['space_bounds_ms'][0]:.3f} to {how['space_bounds_ms'][1]:.3f} ms there); "
         f"{how['kept']} kept of {how['draws']} draws ({100 * how['acceptance']:.0f}%). The first "
         "five kept draws are the proof's random-1..5 (checked), so random-6 onwards are new. "
         "That table describes the machine that built it: it is the draw's fixed rule here; "
         "latency on this machine is measured."), "",
        "## Recipe (identical for every network)", "",
        (f"`nas train --recipe {s['recipe']}`: {epochs} epochs of the proof's recipe (Adam lr "
         "1e-3, x0.1 at 75% and 85% of the epochs, weight decay 1e-4, batch "
         f"{s['batch_size']}, Gaussian targets sigma 2, augmentation scale +-25%, rotation +-30 "
         f"deg, flip; no pretraining; seed {s['seed']}); LSP train split (first 1000 images), "
         "one thread per network, evaluated once at the end on the test split (last 1000): "
         "PCK@0.2, single pass and with flip test. Settings: "
         f"`{json.dumps(recipe)}`."
         + (f" **Smoke run: at most {s['limit']} images per split.**" if s["limit"] else "")),
        "",
        "## Recipe check: short recipe vs the proof's 30 epochs", "",
    ]
    if rc["n"] >= 3:
        lines.append(
            f"On the {rc['n']} proof networks trained so far: Kendall tau "
            f"{_f(rc['kendall_tau'], '.3f')} (p {_f(rc['kendall_p'], '.3f')}), Spearman "
            f"{_f(rc['spearman'], '.3f')}; target tau >= {rc['target_tau']}: "
            + ("met." if rc["met"] else ("**not met**." if rc["n"] == len(PROOF_KEYS)
                                         else "pending (not all 8 trained)."))
            + (f" Without mobilenetv2 (not a network of the space; the {rc['space_only']['n']} "
               f"networks of the space): Kendall tau {_f(rc['space_only']['kendall_tau'], '.3f')}"
               f", Spearman {_f(rc['space_only']['spearman'], '.3f')}."
               if rc.get("space_only", {}).get("n", 0) >= 3 else ""))
        lines += ["", "| network | short recipe | proof, 30 epochs |", "|---|---|---|"]
        lines += [f"| {k} | {a:.2f} | {b:.2f} |"
                  for k, a, b in zip(rc["networks"], rc["short"], rc["long"], strict=True)]
    else:
        lines.append("Pending: fewer than 3 proof networks trained.")
    lines += ["", "## Latency", ""]
    if lat:
        lines.append(
            f"Measured side by side in one fresh process after training: {lat['device']}; "
            f"batch 1, fp32, {lat['threads']} thread, median of {lat['timing']['rounds']} "
            f"interleaved rounds (p10 to p90); load average before "
            f"{lat['load_average_before'][0]:.2f}, {lat['seconds']:.0f} s, {lat['measured']}. "
            f"`ratio` is the network's median over mobilenetv2's in the same rounds; "
            f"of the {summary['drawn_measured']} drawn networks measured, "
            f"{summary['measured_in_window']} lie inside 0.85 to 1.0 x mobilenetv2 here"
            + (f" ({summary['drawn_complete'] - summary['drawn_measured']} trained since are not "
               "measured yet)." if summary["drawn_complete"] > summary["drawn_measured"]
               else "."))
    else:
        lines.append("Not measured yet (measured side by side once training ends).")
    pck = summary["pck_drawn"]
    lines += ["", "## Networks", ""]
    if pck:
        lines.append(f"Drawn networks trained: {summary['drawn_complete']}, PCK@0.2 mean "
                     f"{pck['mean']:.2f} (sd {_f(pck['std'])}), {pck['min']:.2f} to "
                     f"{pck['max']:.2f}.")
        lines.append("")
    lines += ["| network | source | PCK@0.2 | flip | proof 30 ep | predicted ms (proof table) | "
              "latency ms (p10-p90) | ratio | MACs (M) | params (M) | train s |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    order = sorted(table_rows, key=lambda r: (r["pck"] is None, -(r["pck"] or 0)))
    for r in order:
        pck_cell = _f(r["pck"]) if r["status"] == "complete" else r["status"]
        lat_cell = (f"{r['latency_ms']:.3f} ({r['latency_p10_ms']:.3f}-"
                    f"{r['latency_p90_ms']:.3f})" if r["latency_ms"] else "")
        lines.append(
            f"| {r['key']} | {r['source']} | {pck_cell} | {_f(r['pck_flip'])} | "
            f"{_f(r['pck_proof_30ep'])} | {_f(r['predicted_ms_proof_table'], '.3f')} | "
            f"{lat_cell} | {_f(r['latency_ratio_mobilenetv2'], '.3f')} | "
            f"{r['macs'] / 1e6:.1f} | {r['params'] / 1e6:.3f} | {_f(r['train_seconds'], '.0f')} |")
    lines += ["", "## Runs and cost", "",
              f"Training: {summary['train_seconds'] / 3600:.2f} h of single-thread training "
              f"summed over the {summary['complete']} networks (two run at once with "
              "`--workers 2`); wall clock over the "
              f"{len(summary['invocations'])} invocation(s) so far: {wall / 3600:.2f} h.", ""]
    for inv in summary["invocations"]:
        lines.append(f"- {inv['started']}: `{inv['command']}`, {inv.get('seconds', 0) / 60:.0f} "
                     f"min, {inv.get('trained', 0)} network(s) finished, "
                     f"{inv.get('status', '')}; {inv.get('machine', '')}")
    lines += ["", "Files: `table.parquet` / `table.csv` (one row per network; `arch` is the "
              "spec's JSON), `summary.json`, `settings.json` (pinned), `networks/<key>.json` "
              "(per network: PCK per joint, loss per epoch, machine), `latency.json`, "
              "`invocations.json`. Read it with `nas.bench.posebench.load_table()`.", ""]
    return "\n".join(lines)
