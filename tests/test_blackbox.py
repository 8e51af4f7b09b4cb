"""Strategies that propose networks (`--strategy optuna|random`): window draws, the study, the
CLI end to end, resume, storage and bad input.

The latency table is synthetic (row latency proportional to MACs, as in test_search), so
windows and constraints are checked exactly; the supernet is scored for real on tiny data.
"""

import itertools
import json

import numpy as np
import pytest
from conftest import macs_table
from scipy import stats

from lut import LatencyPredictor, LatencyTable
from nas.cli import main
from nas.search.blackbox import Study, Window, open_storage, space_signature
from nas.search.window import WindowSampler
from supernets.errors import NasError
from supernets.space import get_space

INPUT = (64, 64)
TINY = ["--input", "64x64", "--space", "cpu-small", "--epochs", "1", "--train-samples", "40",
        "--batch-size", "8", "--score-images", "8", "--no-progress", "--allow-foreign-lut"]


@pytest.fixture(scope="module")
def space():
    return get_space("cpu-small", input_size=INPUT)


@pytest.fixture(scope="module")
def lut_path(space, tmp_path_factory):
    return macs_table(space, tmp_path_factory.mktemp("lut"))


@pytest.fixture(scope="module")
def predictor(lut_path):
    return LatencyPredictor(LatencyTable.load(lut_path, allow_foreign=True))


@pytest.fixture(scope="module")
def bounds(predictor, space):
    (_, fast), (_, slow) = predictor.bounds(space)
    return fast, slow


def run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


# -- window draws ---------------------------------------------------------------------------

def test_window_draws_match_rejection_sampling_in_the_middle(predictor, space, bounds):
    """Where rejection works (mid-range), the counted draws have its latency distribution."""
    fast, slow = bounds
    rng = np.random.default_rng(0)
    lat = np.array([predictor.latency(space.sample(rng)) for _ in range(4000)])
    low, high = np.quantile(lat, [0.4, 0.6])
    rejected = lat[(lat >= low) & (lat <= high)]
    drawn = [predictor.latency(s) for s in
             WindowSampler(predictor, space, low, high).draws(np.random.default_rng(1), 800)]
    assert min(drawn) >= low and max(drawn) <= high
    assert stats.ks_2samp(drawn, rejected).pvalue > 0.01


def test_window_draws_are_uniform_over_an_enumerated_subspace(predictor, space):
    """Three layers free, the rest fixed by zero weights: every network of the window is drawn
    equally often, and nothing outside it."""
    layers = space.choice_layers()
    free = [layers[0], layers[3], layers[-1]]
    base = {lb.label: lb.names[0] for lb in layers}
    weights = {lb.label: np.eye(len(lb.candidates))[0] for lb in layers}
    for lb in free:
        weights[lb.label] = np.ones(len(lb.candidates))
    nets = []
    for combo in itertools.product(*(lb.names for lb in free)):
        choices = {**base, **{lb.label: c for lb, c in zip(free, combo, strict=True)}}
        nets.append((json.dumps(choices, sort_keys=True),
                     predictor.latency(space.spec(choices))))
    ms = np.array([m for _, m in nets])
    low, high = np.quantile(ms, [0.3, 0.7])
    inside = {k for k, m in nets if low <= m <= high}
    sampler = WindowSampler(predictor, space, low, high)
    draws = sampler.draws(np.random.default_rng(0), 30 * len(inside), weights=weights)
    keys = [json.dumps(dict(d.choices), sort_keys=True) for d in draws]
    assert set(keys) == inside  # every one reached, none outside
    counts = np.array([keys.count(k) for k in sorted(inside)])
    assert stats.chisquare(counts).pvalue > 0.001


def test_window_at_the_fastest_edge_is_drawn_where_rejection_finds_nothing(predictor, space,
                                                                           bounds):
    fast, slow = bounds
    low, high = fast * 1.02, fast * 1.15
    rng = np.random.default_rng(0)
    assert not any(low <= predictor.latency(space.sample(rng)) <= high for _ in range(2000))
    sampler = WindowSampler(predictor, space, low, high)
    for spec in sampler.draws(rng, 20):
        assert low <= predictor.latency(spec) <= high


def test_near_keeps_most_choices_of_a_network_close_to_the_window(predictor, space):
    rng = np.random.default_rng(3)
    spec = space.sample(rng)
    ms = predictor.latency(spec)
    sampler = WindowSampler(predictor, space, 0.9 * ms, 0.95 * ms)
    changed = []
    for _ in range(10):
        near = sampler.near(spec, rng)
        assert 0.9 * ms <= predictor.latency(near) <= 0.95 * ms
        changed.append(sum(near.choices[k] != spec.choices[k] for k in spec.choices))
    assert np.median(changed) <= 3  # of 12 layers
    inside = sampler.sample(rng)
    assert sampler.distance(predictor.latency(inside)) == 0


def test_empty_window_is_refused(predictor, space, bounds):
    with pytest.raises(NasError, match="no architecture"):
        WindowSampler(predictor, space, bounds[1] * 2, bounds[1] * 3)


# -- the study, with a scorer whose optimum is known ---------------------------------------

class DistanceScorer:
    """Loss = share of layers that differ from a target network: a landscape with a known
    optimum, so a guided sampler must find better networks than uniform draws."""

    def __init__(self, target):
        self.target, self.calls = target, 0

    def score(self, spec):
        self.calls += 1
        d = np.mean([spec.choices[k] != v for k, v in self.target.choices.items()])
        return {"loss": float(d), "metric": float(100 * (1 - d)), "seconds": 0.0}


def _study(predictor, space, window, strategy, scorer, tmp_path, *, trials=60, seed=0,
           name="s", pareto=False, windows=None):
    storage = open_storage(None, tmp_path)
    return Study(space=space, predictor=predictor, scorer=scorer,
                 windows=windows or [window], strategy=strategy, objective="loss",
                 pareto=pareto, seed=seed, trials=trials, storage=storage, name=name,
                 attrs={"nas.space": space_signature(space)})


@pytest.fixture(scope="module")
def window_and_target(predictor, space, bounds):
    fast, slow = bounds
    budget = fast + 0.3 * (slow - fast)
    window = Window(budget, 0.87 * budget, 0.97 * budget)
    target = WindowSampler(predictor, space, window.low, window.high).sample(
        np.random.default_rng(11))
    return window, target


def test_tpe_beats_random_search_with_the_same_evaluations(predictor, space, window_and_target,
                                                           tmp_path):
    window, target = window_and_target
    best = {}
    for strategy in ("optuna", "random"):
        scores = []
        for seed in range(2):
            scorer = DistanceScorer(target)
            study = _study(predictor, space, window, strategy, scorer,
                           tmp_path / f"{strategy}{seed}", trials=60, seed=seed)
            assert study.run(progress=False)
            assert scorer.calls == 60 == study.stats()["evaluations"]
            rows = study.best()
            assert all(window.contains(r["predicted_ms"]) for r in rows)
            assert all(window.contains(r["predicted_ms"]) for r in study.rows() if r["evaluated"])
            scores.append(rows[0]["loss"])
        best[strategy] = np.mean(scores)
    assert best["optuna"] < best["random"], best


def test_random_strategy_proposes_only_inside_the_window(predictor, space, window_and_target,
                                                         tmp_path):
    window, target = window_and_target
    study = _study(predictor, space, window, "random", DistanceScorer(target), tmp_path,
                   trials=25)
    study.run(progress=False)
    rows = study.rows()
    assert all(r["feasible"] for r in rows)
    assert study.stats()["outside_window"] == 0


def test_stopped_study_continues_to_the_same_number_of_distinct_networks(
        predictor, space, window_and_target, tmp_path):
    window, target = window_and_target
    scorer = DistanceScorer(target)
    study = _study(predictor, space, window, "optuna", scorer, tmp_path, trials=30)
    real = scorer.score

    def stop_after_ten(spec):
        result = real(spec)
        if scorer.calls == 10:
            study.request_stop()  # as Ctrl-C does: the study stops after this network
        return result

    scorer.score = stop_after_ten
    assert study.run(progress=False) is False
    assert study.stats()["evaluations"] == 10
    scorer2 = DistanceScorer(target)
    again = _study(predictor, space, window, "optuna", scorer2, tmp_path, trials=30)
    assert again.run(progress=False)
    assert again.stats()["evaluations"] == 30 and scorer2.calls == 20
    keys = [json.dumps(r["choices"], sort_keys=True) for r in again.rows() if r["evaluated"]]
    assert len(set(keys)) == 30  # a network is scored once, repeats take its first score


def test_a_study_of_another_space_is_refused(predictor, space, window_and_target, tmp_path):
    window, target = window_and_target
    _study(predictor, space, window, "optuna", DistanceScorer(target), tmp_path, trials=2)
    storage = open_storage(None, tmp_path)
    with pytest.raises(NasError, match="another search's study"):
        Study(space=space, predictor=predictor, scorer=DistanceScorer(target), windows=[window],
              strategy="optuna", objective="loss", pareto=False, seed=0, trials=2,
              storage=storage, name="s", attrs={"nas.space": "0123456789abcdef"})


def test_metric_objective_reads_studies_stored_under_its_old_name_pck(predictor, space,
                                                                       window_and_target,
                                                                       tmp_path):
    """``--objective pck``/``miou`` are the task's metric; a study stored when the objective and
    its trials' attribute were called ``pck`` continues under ``metric``."""
    import optuna

    from nas.search.searcher import SearchConfig

    assert SearchConfig(budget_ms=5.0, objective="pck").objective == "metric"
    assert SearchConfig(budget_ms=5.0, task="seg", space="seg-small",
                        objective="miou").objective == "metric"
    window, target = window_and_target
    storage = open_storage(None, tmp_path)

    def study(objective, trials):
        return Study(space=space, predictor=predictor, scorer=DistanceScorer(target),
                     windows=[window], strategy="random", objective=objective, pareto=False,
                     seed=0, trials=trials, storage=storage, name="s",
                     attrs={"nas.space": space_signature(space), "nas.objective": objective})

    made = study("metric", 3)
    assert made.run(progress=False)
    # the same trials as stored before the rename: objective "pck", the metric under "pck"
    storage = open_storage(None, tmp_path / "old")
    old = optuna.create_study(study_name="s", storage=storage, directions=["maximize"])
    for k, v in {"nas.space": space_signature(space), "nas.objective": "pck"}.items():
        old.set_user_attr(k, v)
    for t in made.study.get_trials(deepcopy=False):
        attrs = {k: v for k, v in t.user_attrs.items() if k != "metric"}
        old.add_trial(optuna.trial.create_trial(
            params=t.params, distributions=t.distributions, values=t.values,
            user_attrs=attrs | {"pck": t.user_attrs["metric"]}, system_attrs=t.system_attrs))
    resumed = study("metric", 5)
    assert resumed.run(progress=False)
    rows = [r for r in resumed.rows() if r["evaluated"]]
    assert len(rows) == 5 and all(r["metric"] == pytest.approx(100 * (1 - r["loss"]))
                                  for r in rows)


def test_sqlite_storage_holds_a_study(predictor, space, window_and_target, tmp_path):
    window, target = window_and_target
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = Study(space=space, predictor=predictor, scorer=DistanceScorer(target),
                  windows=[window], strategy="optuna", objective="loss", pareto=False, seed=0,
                  trials=5, storage=open_storage(url, tmp_path), name="db", attrs={})
    study.run(progress=False)
    again = Study(space=space, predictor=predictor, scorer=DistanceScorer(target),
                  windows=[window], strategy="optuna", objective="loss", pareto=False, seed=0,
                  trials=5, storage=open_storage(url, tmp_path), name="db", attrs={})
    assert again.stats()["evaluations"] == 5


@pytest.mark.parametrize("url, message", [
    ("sqlite:////nonexistent-dir/x/study.db", "cannot open the study database"),
    ("postgresql://user:secret@127.0.0.1:1/db", "--storage postgresql://user:***@"),
])
def test_unreachable_storage_is_one_line_without_the_password(url, message, tmp_path):
    with pytest.raises(NasError) as e:
        open_storage(url, tmp_path)
    assert message in str(e.value) and "secret" not in str(e.value)
    assert len(str(e.value).splitlines()) == 1


def test_pareto_front_is_nondominated_and_every_budget_gets_a_pick(predictor, space, bounds,
                                                                   tmp_path):
    fast, slow = bounds
    budgets = [fast + f * (slow - fast) for f in (0.2, 0.4)]
    windows = [Window(b, 0.87 * b, 0.97 * b) for b in budgets]
    target = WindowSampler(predictor, space, windows[1].low, windows[1].high).sample(
        np.random.default_rng(5))
    study = _study(predictor, space, None, "optuna", DistanceScorer(target), tmp_path,
                   trials=70, pareto=True, windows=windows)
    assert type(study.sampler).__name__ == "NSGAIISampler"
    study.run(progress=False)
    front = study.front()
    for a in front:
        for b in study.best():
            assert not (b["loss"] < a["loss"] and b["predicted_ms"] < a["predicted_ms"])
    for w in windows:
        assert study.best(window=w), w


# -- the CLI ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def optuna_run(lut_path, bounds, tmp_path_factory):
    fast, slow = bounds
    budget = fast + 0.4 * (slow - fast)
    out = tmp_path_factory.mktemp("optuna")
    code = main(["search", "--strategy", "optuna", "--budget", f"{budget}ms", "--lut",
                 str(lut_path), "--out", str(out), "--trials", "6", "--json", *TINY])
    assert code == 0
    return out, budget


def test_optuna_search_writes_arch_report_trials_and_plot(optuna_run, space, predictor):
    out, budget = optuna_run
    for name in ("arch.json", "report.json", "trials.csv", "search.png", "strategy.json",
                 "study.journal", "supernet/oneshot.pt"):
        assert (out / name).exists(), name
    report = json.loads((out / "report.json").read_text())
    assert report["strategy"] == "optuna" and report["search"]["evaluations"] == 6
    assert report["search"]["sampler"] == "TPESampler"
    low, high = report["window_ms"]
    assert low <= report["predicted_ms"] <= high
    from supernets.spec import ArchSpec

    spec = ArchSpec.load(out / "arch.json")
    assert predictor.latency(spec) == pytest.approx(report["predicted_ms"])
    assert report["proxy"]["loss"] == min(r["loss"] for r in report["picks"] or [report["proxy"]])


def test_resume_extends_a_finished_study_with_more_trials(optuna_run, capsys):
    out, _ = optuna_run
    code, stdout, err = run(["search", "--resume", str(out), "--trials", "9", "--json",
                             "--no-progress", "--allow-foreign-lut"], capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert report["search"]["evaluations"] == 9
    assert "training the supernet" not in err  # trained already: the checkpoint is complete


def test_random_strategy_and_pareto_on_the_cli(lut_path, bounds, tmp_path, capsys):
    fast, slow = bounds
    b1, b2 = fast + 0.3 * (slow - fast), fast + 0.5 * (slow - fast)
    code, stdout, err = run(["search", "--strategy", "random", "--pareto", "--budget",
                             f"{b1}ms,{b2}ms", "--lut", str(lut_path), "--out",
                             str(tmp_path / "p"), "--trials", "8", "--json", *TINY], capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert len(report["picks"]) == 2
    for p in report["picks"]:
        lo, hi = p["window_ms"]
        assert lo <= p["predicted_ms"] <= hi
        assert (tmp_path / "p" / p["arch_file"].split("/")[-1]).exists()
    for name in ("pareto.csv", "pareto.png"):
        assert (tmp_path / "p" / name).exists()


@pytest.mark.parametrize("argv, message", [
    (["--strategy", "annealing"], "argument --strategy: invalid choice: 'annealing'"),
    (["--strategy", "optuna", "--pareto"], "--pareto: give several budgets"),
    (["--strategy", "optuna", "--budget", "2ms,,3ms", "--pareto"], "entry 2 is empty"),
    (["--strategy", "optuna", "--budget", "2ms,3 parsecs", "--pareto"], "entry 2 ('3 parsecs')"),
    (["--strategy", "optuna", "--budget", "2ms,3ms"], "2 budgets need --pareto"),
    (["--strategy", "optuna", "--lam", "0.2"], "--lam is not a setting of --strategy optuna"),
    (["--trials", "5"], "--trials is not a setting of --strategy differentiable"),
    (["--strategy", "optuna", "--storage", "sqlite:////nonexistent-dir/x/s.db"],
     "cannot open the study database"),
    (["--strategy", "optuna", "--supernet", "/nonexistent/oneshot.pt"], "/nonexistent/oneshot.pt"),
])
def test_bad_input_is_one_line_and_writes_nothing(argv, message, lut_path, bounds, tmp_path,
                                                  capsys):
    fast, slow = bounds
    if "--budget" not in argv:
        argv = [*argv, "--budget", f"{fast + 0.4 * (slow - fast)}ms"]
    out = tmp_path / "out"
    code, _, err = run(["search", "--lut", str(lut_path), "--out", str(out), *TINY, *argv],
                       capsys)
    assert code == 2, err
    assert message in err and "error:" in err and len(err.strip().splitlines()) == 1, err
    assert not any(out.rglob("*.json")) if out.exists() else True
    assert not (out / "strategy.json").exists()


def test_resume_of_a_proposing_search_refuses_epochs(optuna_run, capsys):
    out, _ = optuna_run
    code, _, err = run(["search", "--resume", str(out), "--epochs", "5"], capsys)
    assert code == 2 and "--epochs does not extend this search" in err


def test_search_stopped_in_supernet_training_resumes_to_the_end(lut_path, bounds, tmp_path,
                                                                monkeypatch):
    from nas.search import SearchConfig, oneshot, search

    real = oneshot.OneShotTrainer.train_step
    calls = {"n": 0}

    def stop_at_second_step(self, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            self.request_stop()  # as Ctrl-C does
        return real(self, batch)

    monkeypatch.setattr(oneshot.OneShotTrainer, "train_step", stop_at_second_step)
    fast, slow = bounds
    cfg = SearchConfig(budget_ms=fast + 0.4 * (slow - fast), space="cpu-small",
                       input_size=INPUT, epochs=1, train_samples=40, batch_size=8,
                       strategy="random", trials=3, score_images=8)
    kw = dict(lut=str(lut_path), allow_foreign_lut=True, progress=False)
    stopped = search(cfg, tmp_path / "s", **kw)
    assert stopped["status"] == "interrupted" and stopped["stopped_in"] == "supernet training"
    assert not (tmp_path / "s" / "arch.json").exists()
    monkeypatch.undo()
    done = search(None, tmp_path / "s", resume=True, **kw)
    assert done["search"]["evaluations"] == 3 and (tmp_path / "s" / "arch.json").exists()
    assert done["search"]["supernet"]["epochs"] == 1


class LatencyScorer:
    """A metric that grows with latency, as accuracy does with size: an objective that ignores
    latency picks the slowest network of the window."""

    def __init__(self, predictor):
        self.predictor = predictor

    def score(self, spec):
        ms = self.predictor.latency(spec)
        return {"loss": 1.0 / (50 + 3 * ms), "metric": 50 + 3 * ms, "seconds": 0.0}


def test_score_objective_trades_the_metric_against_latency(space, predictor, bounds, tmp_path):
    """--objective score with a proposing strategy: each scored network's value is its metric x
    W(predicted latency), maximised; the window has no floor (as the differentiable search's),
    so the pick sits where more metric stops paying for the latency, not at the window's top."""
    from lut import LatencyTable
    from nas.search.run import budget_window
    from nas.search.searcher import SearchConfig
    from nas.tasks.seg.score import latency_weight

    # the space stretched to 1.5 to 12 ms-ish, across W's slope from 3 to 10 ms
    table = LatencyTable.load(macs_table(space, tmp_path), allow_foreign=True)
    scale = 12.0 / bounds[1]
    stretched = LatencyTable.from_rows(
        space, {k: float(v) * scale for k, v in zip(table.rows["key"], table.rows["median_ms"])})
    slow_predictor = LatencyPredictor(stretched)
    cfg = SearchConfig(budget_ms=10.0, task="seg", space="seg-small", objective="score",
                       strategy="random")
    window = Window(10.0, *budget_window(cfg, 10.0, bounds[0] * scale))
    assert window.low == 0.0
    picks = {}
    for objective in ("score", "metric"):
        study = Study(space=space, predictor=slow_predictor, scorer=LatencyScorer(slow_predictor),
                      windows=[window], strategy="random", objective=objective, pareto=False,
                      seed=0, trials=40, storage=open_storage(None, tmp_path / objective),
                      name="s", attrs={})
        assert study.run(progress=False)
        rows = study.best()
        if objective == "score":
            for r in rows:
                assert r["value"] == pytest.approx(r["metric"] * latency_weight(r["predicted_ms"]))
        assert [r["value"] for r in rows] == sorted((r["value"] for r in rows), reverse=True)
        picks[objective] = rows[0]["predicted_ms"]
    assert picks["score"] < picks["metric"] - 1.0, picks
    with pytest.raises(NasError, match="--pareto with --objective score"):
        SearchConfig(budget_ms=10.0, task="seg", space="seg-small", objective="score",
                     strategy="optuna", pareto=True, budgets_ms=(5.0, 10.0))


WORKER = """
import sys
import numpy as np
from pathlib import Path
sys.path.insert(0, {tests!r})
from conftest import macs_table
from lut import LatencyPredictor, LatencyTable
from nas.search.blackbox import Study, Window, open_storage, space_signature
from supernets.space import get_space

space = get_space("cpu-small", input_size=(64, 64))
predictor = LatencyPredictor(LatencyTable.load({lut!r}, allow_foreign=True))
(_, fast), (_, slow) = predictor.bounds(space)
budget = fast + 0.3 * (slow - fast)
target = space.sample(np.random.default_rng(11))

class Scorer:
    def score(self, spec):
        d = float(np.mean([spec.choices[k] != v for k, v in target.choices.items()]))
        return {{"loss": d, "metric": 100 * (1 - d), "seconds": 0.0}}

study = Study(space=space, predictor=predictor, scorer=Scorer(),
              windows=[Window(budget, 0.87 * budget, 0.97 * budget)], strategy="optuna",
              objective="loss", pareto=False, seed=0, trials=24,
              storage=open_storage({url!r}, Path({out!r})), name="shared",
              attrs={{"nas.space": space_signature(space)}}, worker=int(sys.argv[1]))
assert study.run(progress=False)
"""


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_two_workers_share_one_study(kind, lut_path, tmp_path):
    """Two processes started together on one journal file or one SQLite database: one study,
    trial numbers unique, every trial of both in it, the trial count reached together."""
    import subprocess
    import sys
    from pathlib import Path

    import optuna

    url = str(tmp_path / "study.journal") if kind == "journal" else \
        f"sqlite:///{tmp_path / 'study.db'}"
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent), lut=str(lut_path),
                                    url=url, out=str(tmp_path)))
    workers = [subprocess.Popen([sys.executable, str(script), str(w)], stderr=subprocess.PIPE,
                                text=True) for w in (1, 2)]
    for w in workers:
        assert w.wait(timeout=300) == 0, w.stderr.read()[-2000:]
    trials = optuna.load_study(study_name="shared", storage=open_storage(url, tmp_path)
                               ).get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) == max(numbers) + 1
    evaluated = {t.user_attrs["key"] for t in trials if t.user_attrs.get("evaluated")}
    assert len(evaluated) >= 24   # each stops once the study holds 24 scored networks
