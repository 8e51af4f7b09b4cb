"""Search by proposing whole networks and scoring each one on a trained supernet.

``nas search --strategy optuna`` and ``--strategy random`` share this harness:

1. a one-shot supernet (``nas.search.oneshot``) is trained on the search's weight split, in
   ``OUT/supernet/`` (resumable), unless ``--supernet PATH`` hands over one trained before;
2. an Optuna study proposes networks, one categorical parameter per choice layer: TPE for
   ``optuna`` (NSGA-II with ``--pareto``), uniform draws for ``random``, both seeded. Uniform
   means uniform among the networks *of the window* (``nas.search.window.WindowSampler``, exact
   counting over the table): random search draws every proposal so, TPE its first ``STARTUP``
   proposals and NSGA-II its first population (split evenly across the budgets), since at a
   window near the space's edge uniform per-layer draws almost never land inside it;
3. each proposal's predicted latency (the calibrated table, times the speed probe) is a
   constraint (``trial.set_constraint``, Optuna 5: feasible when <= 0): the distance in ms from
   the budget's window. A proposal outside the window is not scored: the sampler learns the
   constraint from it, Optuna never returns it as the best trial, and the next proposal is the
   network of the window nearest to it (``WindowSampler.near``: most of its choices kept, the
   fewest layers changed that the window needs), enqueued as a trial of its own;
4. a proposal inside the window is scored by the supernet (``PathScorer``: its path's standalone
   network with BatchNorm statistics recomputed on weight-split batches, heatmap loss or
   PCK@0.2 on held-out architecture-split training images). A network proposed again takes its
   first score. The search ends after ``trials`` *distinct scored* networks (the proxy
   evaluations), over every process working on the study.

The study lives in the run directory (``study.journal``, a ``JournalFileBackend``), so
``--resume`` continues it and several processes on one machine can work on it at once. For
workers on several machines, ``--storage`` takes an RDB URL (``sqlite:///study.db``,
``postgresql://user:pass@host/db``) and ``--supernet`` a copy of the first run's supernet; each
worker checks that the study was made for the same space, budget window, objective and supernet.

Random search is the baseline that a guided sampler must beat with the same number of proxy
evaluations: it draws every layer uniformly, i.e. uniformly among the networks of the window.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nas.interrupt import stop_on_sigint
from supernets.errors import NasError
from supernets.fileio import write_atomic
from supernets.space import SearchSpace
from supernets.spec import ArchSpec

__all__ = ["BLACKBOX", "OBJECTIVES", "OBJECTIVE_ALIASES", "STATE_FORMAT", "STRATEGIES", "Study",
           "Window", "choice_key", "choices_key", "open_storage", "plot_study", "space_signature",
           "write_front_csv", "write_trials_csv"]

STRATEGIES = ("differentiable", "optuna", "random")
BLACKBOX = ("optuna", "random")
OBJECTIVES = ("loss", "metric")
# --objective pck (pose) and miou (seg) name the task's metric; studies made before "metric" say pck
OBJECTIVE_ALIASES = {"pck": "metric", "miou": "metric"}
STATE_FORMAT = "nas.search-blackbox/1"
STUDY_FILE = "study.journal"
MAX_PROPOSALS_PER_EVALUATION = 50  # proposals outside the window are free, but not endless
STARTUP = 20                       # TPE: uniform draws from the window before it models
POPULATION = 50                    # NSGA-II: population (its first one drawn from the windows)


def space_signature(space: SearchSpace) -> str:
    """What a study's parameters mean: the space's name, input, joints and every layer's
    candidates, hashed. Two runs share a study only with the same signature."""
    sk = space.skeleton
    desc = {"space": space.name, "input": list(sk.input_size), "joints": sk.num_joints,
            "layers": {layer.label: list(layer.names) for layer in space.choice_layers()}}
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]


def _redact(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


RDB_ATTEMPTS = 4   # opening a database: tries before the error (0.2, 0.4, 0.6 s apart)


def open_storage(url: str | None, out: Path):
    """The study's storage: the run directory's journal file, a journal file path, or an RDB
    URL (``sqlite:///...``, ``postgresql://...``, ``mysql://...``)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if url is None or "://" not in url:
        path = Path(url) if url else Path(out) / STUDY_FILE
        if url and path.is_dir():
            raise NasError(f"--storage {url}: a directory; expected a journal file path or an "
                           "RDB URL such as sqlite:///study.db")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as e:
            raise NasError(f"--storage {path}: cannot open the journal ({e.strerror})") from None
    for attempt in range(RDB_ATTEMPTS):
        try:
            storage = optuna.storages.RDBStorage(url)
            storage.get_all_studies()  # connects
            return storage
        except ImportError as e:
            raise NasError(f"--storage {_redact(url)}: its database driver is not installed "
                           f"({e.name or e})") from None
        except Exception as e:  # noqa: BLE001  SQLAlchemy raises many types for unreachable DBs
            # workers started together race to create a new database's schema (a UNIQUE
            # constraint fails in the loser): the schema is there a moment later
            if attempt + 1 < RDB_ATTEMPTS:
                time.sleep(0.2 * (attempt + 1))
                continue
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise NasError(f"--storage {_redact(url)}: cannot open the study database "
                           f"({why[:160]})") from None


@dataclass
class Window:
    """Predicted-latency window of one budget (ms); ``None`` bounds: no constraint that side."""
    budget_ms: float
    low: float | None
    high: float | None

    def violation(self, ms: float) -> float:
        over = ms - self.high if self.high is not None else 0.0
        under = self.low - ms if self.low is not None else 0.0
        return max(0.0, over, under)

    def contains(self, ms: float) -> bool:
        return self.violation(ms) <= 0.0


class Study:
    """One Optuna study over a space: proposes, constrains, scores and counts networks."""

    def __init__(self, *, space: SearchSpace, predictor, scorer, windows: list[Window],
                 strategy: str, objective: str, pareto: bool, seed: int, trials: int,
                 storage, name: str, attrs: dict, worker: int = 0):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if strategy not in BLACKBOX:
            raise NasError(f"--strategy {strategy!r}: not a strategy that proposes networks "
                           f"({', '.join(BLACKBOX)})")
        if objective not in (*OBJECTIVES, "score"):
            raise NasError(f"--objective {objective!r}: expected one of "
                           f"{', '.join(OBJECTIVES)} or score")
        from nas.search.window import WindowSampler

        self.space, self.latency, self.scorer = space, predictor.latency, scorer
        self.windows, self.strategy, self.objective = windows, strategy, objective
        self.pareto, self.trials, self.seed = pareto, trials, seed
        self.worker = worker   # 0 alone; distinct per process sharing a study (its stream)
        self.layers = space.choice_layers()
        # the union of the budgets' windows is the feasible region
        lows = [w.low for w in windows]
        highs = [w.high for w in windows]
        self.feasible = Window(max(w.budget_ms for w in windows),
                               None if None in lows else min(lows),
                               None if None in highs else max(highs))
        direction = "minimize" if objective == "loss" else "maximize"
        directions = [direction, "minimize"] if pareto else [direction]
        self.samplers = [WindowSampler(predictor, space, w.low, w.high) for w in windows]
        self.study = self._load_or_create(optuna, storage, name, directions, attrs)
        self.sampler = self._sampler(optuna)
        done = len(self.study.get_trials(deepcopy=False))
        self.rng = np.random.default_rng([seed, done, worker] if worker else [seed, done])
        self.study.sampler = self.sampler
        self._stop = False

    def _load_or_create(self, optuna, storage, name, directions, attrs):
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            try:
                study = optuna.create_study(study_name=name, storage=storage,
                                            directions=directions)
            except optuna.exceptions.DuplicatedStudyError:
                # another worker created it a moment ago: join it once its attributes are set
                study = self._joined(optuna, storage, name, attrs)
            else:
                for k, v in attrs.items():
                    study.set_user_attr(k, v)
                return study
        if any(k not in study.user_attrs for k in attrs):   # being created by another worker
            study = self._joined(optuna, storage, name, attrs)
        theirs = study.user_attrs
        for k, v in attrs.items():
            mine = json.loads(json.dumps(theirs.get(k)))
            if k == "nas.objective":
                mine = OBJECTIVE_ALIASES.get(mine, mine)
            if mine != json.loads(json.dumps(v)):
                raise NasError(f"study {name!r} in the storage was made with {k}="
                               f"{theirs.get(k)!r}, not {v!r}: another search's study; use "
                               "another --study name or storage")
        if [d.name.lower() for d in study.directions] != directions:
            raise NasError(f"study {name!r} in the storage optimises "
                           f"{[d.name.lower() for d in study.directions]}, not {directions}")
        return study

    @staticmethod
    def _joined(optuna, storage, name, attrs, wait_s: float = 10.0):
        """The study another worker is creating, once it carries every attribute."""
        deadline = time.monotonic() + wait_s
        while True:
            study = optuna.load_study(study_name=name, storage=storage)
            if all(k in study.user_attrs for k in attrs) or time.monotonic() > deadline:
                return study
            time.sleep(0.1)

    def _sampler(self, optuna):
        # a process joining a study that has trials already draws from another stream, so that
        # workers (and a resumed run) do not repeat the proposals the first one made; workers
        # started together (done 0 for each) are told apart by ``worker``
        done = len(self.study.get_trials(deepcopy=False))
        seed = self.seed if done == 0 else self.seed * 7_919 + done
        if self.worker:
            seed = seed * 104_729 + self.worker
        if self.strategy == "random":
            return optuna.samplers.RandomSampler(seed=seed)  # every proposal is enqueued
        if self.pareto:
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=POPULATION)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=STARTUP)

    def _uniform_from_window(self, proposals: int) -> bool:
        if self.strategy == "random":
            return True
        return proposals < (POPULATION if self.pareto else STARTUP)

    def _enqueue_window_draw(self, proposals: int) -> None:
        sampler = self.samplers[proposals % len(self.samplers)]
        spec = sampler.sample(self.rng)
        self.study.enqueue_trial(dict(spec.choices), skip_if_exists=False)

    def request_stop(self) -> None:
        self._stop = True

    # -- trials -------------------------------------------------------------------------------
    def _spec(self, trial) -> ArchSpec:
        choices = {layer.label: trial.suggest_categorical(layer.label, list(layer.names))
                   for layer in self.layers}
        return self.space.spec(choices, name=f"trial-{trial.number}")

    def completed(self) -> list:
        from optuna.trial import TrialState

        return self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))

    def scored(self) -> dict[str, object]:
        """Distinct scored networks: choice key -> its first scored trial."""
        out = {}
        for t in self.completed():
            if t.user_attrs.get("evaluated"):
                out.setdefault(t.user_attrs["key"], t)
        return out

    def _values(self, value: float, ms: float) -> list[float]:
        return [value, ms] if self.pareto else [value]

    def _infeasible_value(self) -> float:
        return math.inf if self.objective == "loss" else -math.inf

    def run(self, *, progress: bool = True) -> bool:
        """Propose and score until ``trials`` distinct networks are scored; False if stopped."""
        scored = self.scored()
        proposals = len(self.study.get_trials(deepcopy=False))
        limit = proposals + MAX_PROPOSALS_PER_EVALUATION * max(1, self.trials - len(scored))
        with stop_on_sigint(self.request_stop), tqdm(
                total=self.trials, initial=min(len(scored), self.trials), disable=not progress,
                unit="net", desc=f"search ({self.strategy})", dynamic_ncols=True) as bar:
            while len(scored) < self.trials:
                if self._stop:
                    return False
                if proposals >= limit:
                    break
                if self._uniform_from_window(proposals):
                    self._enqueue_window_draw(proposals)
                trial = self.study.ask()
                proposals += 1
                try:
                    values, new, spec, ms = self._evaluate(trial, scored)
                    self.study.tell(trial, values)
                except BaseException:
                    if self._taken(trial):
                        # a queued trial another worker sharing the study took as well (an RDB
                        # without row locks can hand one waiting trial to two): theirs now
                        continue
                    from optuna.trial import TrialState

                    self.study.tell(trial, state=TrialState.FAIL)
                    raise
                if not self.feasible.contains(ms):
                    # the sampler learns the constraint from this proposal; the next one is the
                    # network of the window nearest to it, so no evaluation is lost to it
                    near = min(self.samplers, key=lambda ws: ws.distance(ms))
                    self.study.enqueue_trial(dict(near.near(spec, self.rng).choices),
                                             skip_if_exists=False)
                if new:
                    scored = self.scored()  # other workers' networks count too
                    bar.n = min(len(scored), self.trials)
                    best = self.best(1)
                    if best:
                        bar.set_postfix(best=f"{best[0]['value']:.4g}", proposed=proposals,
                                        refresh=False)
                    bar.refresh()
        return True

    def _taken(self, trial) -> bool:
        """Whether ``trial`` was finished by another worker while this one held it."""
        try:
            return self.study.get_trials(deepcopy=False)[trial.number].state.is_finished()
        except Exception:  # noqa: BLE001  the storage itself failing: not a taken trial
            return False

    def _evaluate(self, trial, scored: dict) -> tuple[list[float], bool, ArchSpec, float]:
        spec = self._spec(trial)
        ms = float(self.latency(spec))
        key = choice_key(spec)
        trial.set_user_attr("predicted_ms", ms)
        trial.set_user_attr("key", key)
        violation = self.feasible.violation(ms)
        trial.set_constraint("latency_ms", violation)
        if violation > 0:
            return self._values(self._infeasible_value(), ms), False, spec, ms
        if key in scored:
            first = scored[key]
            trial.set_user_attr("duplicate_of", first.number)
            for k in ("loss", "metric"):
                trial.set_user_attr(k, _attr(first.user_attrs, k))
            return self._values(first.values[0], ms), False, spec, ms
        result = self.scorer.score(spec)
        for k in ("loss", "metric", "seconds"):
            trial.set_user_attr(k, float(result[k]))
        trial.set_user_attr("evaluated", True)
        return self._values(self._objective(result, ms), ms), True, spec, ms

    def _objective(self, result: dict, ms: float) -> float:
        """The value a scored network gets: the supernet's held-out loss or metric, or for
        ``score`` its metric (mIoU) x W(T) at its predicted latency (nas.tasks.seg.score): the
        trade-off of accuracy and latency in one number, maximised."""
        if self.objective == "score":
            from nas.tasks.seg.score import latency_weight

            return float(result["metric"]) * latency_weight(ms)
        return float(result[self.objective])

    # -- results ------------------------------------------------------------------------------
    def rows(self) -> list[dict]:
        """Every finished proposal, in order."""
        out = []
        for t in self.study.get_trials(deepcopy=False):
            if t.state.name != "COMPLETE":
                continue
            a = t.user_attrs
            out.append({"trial": t.number, "predicted_ms": a.get("predicted_ms"),
                        "feasible": all(v <= 0 for v in (t.constraints or {}).values()),
                        "evaluated": bool(a.get("evaluated")),
                        "duplicate_of": a.get("duplicate_of"),
                        "loss": a.get("loss"), "metric": _attr(a, "metric"),
                        "seconds": a.get("seconds"),
                        "value": t.values[0] if t.values else None,
                        "choices": {k: t.params[k] for k in sorted(t.params)}})
        return out

    def best(self, n: int | None = None, window: Window | None = None) -> list[dict]:
        """Scored networks inside ``window`` (default: the feasible region), best first."""
        window = window or self.feasible
        rows = [r for r in self.rows() if r["evaluated"] and window.contains(r["predicted_ms"])]
        sign = 1.0 if self.objective == "loss" else -1.0
        rows.sort(key=lambda r: (sign * r["value"], r["trial"]))
        return rows[:n] if n else rows

    def front(self) -> list[dict]:
        """Scored networks no other scored network beats in both objective and latency."""
        sign = 1.0 if self.objective == "loss" else -1.0
        rows = sorted(self.best(), key=lambda r: (r["predicted_ms"], sign * r["value"]))
        front, best = [], math.inf
        for r in rows:
            if sign * r["value"] < best:
                front.append(r)
                best = sign * r["value"]
        return front

    def stats(self) -> dict:
        rows = self.rows()
        return {"proposed": len(rows), "evaluations": sum(r["evaluated"] for r in rows),
                "outside_window": sum(not r["feasible"] for r in rows),
                "repeats": sum(r["duplicate_of"] is not None for r in rows),
                "score_seconds": float(sum(r["seconds"] or 0.0 for r in rows if r["evaluated"]))}


def choices_key(choices: Mapping[str, str]) -> str:
    """A network's choices as one canonical string (layer order does not matter)."""
    return json.dumps(dict(sorted(choices.items())), separators=(",", ":"))


def choice_key(spec: ArchSpec) -> str:
    return choices_key(spec.choices)


def write_trials_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    fields = ["trial", "predicted_ms", "feasible", "evaluated", "duplicate_of", "loss", "metric",
              "seconds", "choices"]
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for r in rows:
        w.writerow({**{k: r[k] for k in fields if k != "choices"},
                    "choices": json.dumps(r["choices"], separators=(",", ":"))})
    write_atomic(path, buf.getvalue())


def plot_study(rows: list[dict], windows: list[Window], objective: str, picks: list[dict],
               path: Path, *, front: list[dict] | None = None,
               metric_name: str = "PCK@0.2") -> None:
    """Left: every scored network, predicted latency against the proxy (the metric for the
    ``score`` objective), with the budgets' windows and the picks. Right: the best objective so
    far against proxy evaluations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [r for r in rows if r["evaluated"]]
    if not scored:
        return
    shown = "metric" if objective == "score" else objective
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.scatter([r["predicted_ms"] for r in scored], [r[shown] for r in scored], s=10,
                alpha=0.6, label="scored networks")
    if front:
        ax1.plot([r["predicted_ms"] for r in front], [r[shown] for r in front], "k.-",
                 lw=1, label="front")
    for w in windows:
        if w.low is not None and w.high is not None:
            ax1.axvspan(w.low, w.high, color="g", alpha=0.08)
        ax1.axvline(w.budget_ms, color="r", ls="--", lw=0.8)
    for p in picks:
        ax1.scatter([p["predicted_ms"]], [p[shown]], marker="*", s=160, color="r",
                    zorder=5)
    ax1.set_xlabel("predicted latency (ms)")
    ax1.set_ylabel(f"supernet {'held-out task loss' if shown == 'loss' else metric_name}")
    ax1.legend(fontsize=8)
    sign = 1.0 if objective == "loss" else -1.0
    best, curve = math.inf, []
    for r in scored:
        best = min(best, sign * r["value"])
        curve.append(sign * best)
    ax2.plot(range(1, len(curve) + 1), curve, "-")
    ax2.set_xlabel("proxy evaluations")
    ax2.set_ylabel(f"best {metric_name} x W(T) so far" if objective == "score"
                   else f"best {'loss' if objective == 'loss' else metric_name} so far")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def write_front_csv(path: Path, front: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["trial", "predicted_ms", "loss", "metric", "choices"])
    for r in front:
        w.writerow([r["trial"], r["predicted_ms"], r["loss"], r["metric"],
                    json.dumps(r["choices"], separators=(",", ":"))])
    write_atomic(path, buf.getvalue())


def _attr(attrs: dict, key: str):
    """A trial's attribute; the metric of trials stored before "metric" is under "pck"."""
    return attrs.get(key, attrs.get("pck")) if key == "metric" else attrs.get(key)


def log(msg: str) -> None:
    print(f"nas: {msg}", file=sys.stderr)

