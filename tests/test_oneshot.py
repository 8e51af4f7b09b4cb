"""One-shot supernets (nas.search.oneshot), zero-cost proxies (nas.bench.zerocost) and proxy
fidelity (nas.bench.proxies), on tiny synthetic runs of the cpu-base space."""

import copy
import json
import math

import numpy as np
import pytest
import torch

from nas.bench.proxies import _cache, fidelity, zerocost_columns
from nas.bench.zerocost import PROXIES, jacob_cov, naswot, score_all, synflow
from nas.search import SearchConfig
from nas.search.oneshot import (
    ONESHOT_FORMAT,
    RULES,
    OneShotConfig,
    OneShotTrainer,
    PathScorer,
    load_snapshot,
    split_datasets,
    train_oneshot,
)
from nas.search.run import _datasets
from supernets.errors import NasError
from supernets.model import PoseNet
from supernets.space import get_space

# 12 synthetic images at batch 4: 4 held out (architecture split), 8 train (2 steps an epoch)
SMALL = dict(space="cpu-base", preset=None, epochs=2, batch_size=4, train_samples=12,
             random_paths=1, threads=1)


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def clone_state(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def is_bn_stat(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")


# -- OneShotConfig -------------------------------------------------------------------------------
def test_config_refuses_unknown_rule_naming_the_rules():
    with pytest.raises(NasError) as e:
        OneShotConfig(rule="sandwitch")
    assert "'sandwitch'" in str(e.value)
    assert all(rule in str(e.value) for rule in RULES)


@pytest.mark.parametrize("snapshots", [(0,), (5,), (1, 5), (-1,)])
def test_config_refuses_snapshots_outside_the_epochs(snapshots):
    with pytest.raises(NasError, match="snapshots"):
        OneShotConfig(epochs=4, snapshots=snapshots)


def test_config_normalises_snapshots_and_checks_fields():
    cfg = OneShotConfig(epochs=5, snapshots=[5, 1, 3, 1])
    assert cfg.snapshots == (1, 3, 5)
    assert OneShotConfig(epochs=3, snapshots=(1, 3)).snapshots == (1, 3)
    for bad in (dict(epochs=0), dict(batch_size=0), dict(random_paths=-1), dict(lr=0.0),
                dict(arch_split=1.0), dict(weight_decay=-1e-4), dict(threads=0)):
        with pytest.raises(NasError):
            OneShotConfig(**bad)


# -- split_datasets --------------------------------------------------------------------------------
def test_split_is_disjoint_covers_the_data_and_matches_the_search():
    space = get_space("cpu-base")
    full, weight, arch = split_datasets(space, None, seed=3, arch_split=0.2, batch_size=8,
                                        train_samples=48)
    assert len(full) == 48
    assert not set(weight) & set(arch)
    assert sorted(weight + arch) == list(range(48))
    assert len(arch) == 10 and len(weight) == 38          # round(0.2 * 48), the rest
    again = split_datasets(space, None, seed=3, arch_split=0.2, batch_size=8, train_samples=48)
    assert (again[1], again[2]) == (weight, arch)
    other = split_datasets(space, None, seed=4, arch_split=0.2, batch_size=8, train_samples=48)
    assert other[2] != arch
    # the search's own split is the same one
    cfg = SearchConfig(budget_ms=1.0, space="cpu-base", seed=3, arch_split=0.2, batch_size=8,
                       train_samples=48)
    train_set, arch_set = _datasets(cfg, space)
    assert train_set.indices == weight and arch_set.indices == arch
    assert train_set.base is arch_set.base and len(train_set.base) == 48


def test_split_holds_out_at_least_a_batch_and_refuses_too_few_samples():
    space = get_space("cpu-base")
    _, weight, arch = split_datasets(space, None, seed=0, arch_split=0.01, batch_size=8,
                                     train_samples=48)
    assert len(arch) == 8 and len(weight) == 40
    with pytest.raises(NasError, match="too few"):
        split_datasets(space, None, seed=0, arch_split=0.2, batch_size=8, train_samples=12)


# -- paths ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", RULES)
def test_paths_of_each_rule(rule):
    trainer = OneShotTrainer(OneShotConfig(**{**SMALL, "rule": rule, "random_paths": 3}))
    space, supernet = trainer.space, trainer.supernet
    largest = supernet.fixed_mixes(space.largest())
    smallest = supernet.fixed_mixes(space.smallest())
    assert largest != smallest
    sizes = {layer.label: len(layer.candidates) for layer in space.choice_layers()}
    start = trainer.gen.get_state()
    drawn, calls = [], []
    for _ in range(3):
        paths = trainer.paths()
        calls.append(paths)
        if rule == "uniform":
            assert len(paths) == 1
            uniform = paths
        else:
            # largest first (the teacher of sandwich-kd), then smallest, then random_paths
            assert len(paths) == 5
            assert paths[0] == largest and paths[1] == smallest
            uniform = paths[2:]
        for path in uniform:
            assert path.keys() == sizes.keys()
            for label, mix in path.items():
                ((index, weight),) = mix
                assert 0 <= index < sizes[label] and weight == 1.0
        drawn += uniform
    assert len({tuple(sorted((k, v[0][0]) for k, v in p.items())) for p in drawn}) > 1
    # the draws come from the trainer's own generator (saved in its checkpoint)
    trainer.gen.set_state(start)
    assert [trainer.paths() for _ in range(3)] == calls


# -- training --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Every rule trained for 2 epochs (snapshots at 1 and 2; the others: only at 2)."""
    out = {}
    for rule in RULES:
        cfg = OneShotConfig(**SMALL, rule=rule, snapshots=(1, 2) if rule == "sandwich" else (2,))
        path = tmp_path_factory.mktemp(rule)
        out[rule] = (cfg, path, train_oneshot(cfg, path, progress=False))
    return out


@pytest.mark.parametrize("rule", RULES)
def test_every_rule_trains_and_writes_its_files(trained, rule):
    cfg, path, result = trained[rule]
    assert result["status"] == "complete" and result["epoch"] == 2
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    assert all(math.isfinite(h["loss"]) and h["loss"] > 0 for h in result["history"])
    assert (path / "oneshot.pt").is_file()
    log = [json.loads(line) for line in (path / "log.jsonl").read_text().splitlines()]
    assert log == result["history"]
    expected = [path / f"supernet-e{e}.pt" for e in cfg.snapshots]
    assert result["snapshots"] == [str(p) for p in expected]
    assert all(p.is_file() for p in expected)
    if 1 not in cfg.snapshots:
        assert not (path / "supernet-e1.pt").exists()


def test_distillation_changes_what_is_learned(trained):
    a = torch.load(trained["sandwich"][1] / "supernet-e2.pt", weights_only=True)["supernet"]
    b = torch.load(trained["sandwich-kd"][1] / "supernet-e2.pt", weights_only=True)["supernet"]
    # same data and path draws; only the non-largest paths' targets differ
    assert not same_state(a, b)


def test_finished_run_is_not_retrained_and_ignores_snapshots_and_threads(trained):
    cfg, path, result = trained["sandwich"]
    before = (path / "oneshot.pt").read_bytes()
    try:
        again = train_oneshot(OneShotConfig(**{**SMALL, "rule": "sandwich", "snapshots": (1,),
                                               "threads": 2}), path, progress=False)
    finally:
        torch.set_num_threads(1)  # the trainer sets the process's thread count
    assert again["status"] == "complete" and again["history"] == result["history"]
    assert again["snapshots"] == [str(path / "supernet-e1.pt")]
    assert (path / "oneshot.pt").read_bytes() == before


def test_snapshot_asked_for_after_its_epoch_is_a_one_line_error(trained):
    # uniform trained with snapshots (2,) only: epoch 1's weights were never kept
    _, path, _ = trained["uniform"]
    with pytest.raises(NasError) as e:
        train_oneshot(OneShotConfig(**SMALL, rule="uniform", snapshots=(1, 2)), path,
                      progress=False)
    assert "\n" not in str(e.value) and "past epoch 1" in str(e.value)
    assert not (path / "supernet-e1.pt").exists()


@pytest.mark.parametrize("seed", [-1, 1.5])
def test_config_refuses_a_bad_seed(seed):
    with pytest.raises(NasError, match="seed"):
        OneShotConfig(seed=seed)


def test_checkpoint_of_another_config_is_refused(trained):
    # only snapshots and threads may differ from the checkpoint's config: epochs may not
    _, path, _ = trained["sandwich"]
    before = (path / "oneshot.pt").read_bytes()
    cfg = OneShotConfig(**{**SMALL, "rule": "sandwich", "snapshots": (1, 2), "epochs": 3})
    with pytest.raises(NasError) as e:
        train_oneshot(cfg, path, progress=False)
    message = str(e.value)
    assert "\n" not in message and str(path / "oneshot.pt") in message
    assert "epochs=2, not 3" in message
    assert (path / "oneshot.pt").read_bytes() == before
    assert not (path / "supernet-e3.pt").exists()


def test_interrupted_run_continues_to_the_same_weights(trained, tmp_path):
    # as the uniform run of ``trained`` (2 epochs of 2 steps), but stopped after 3 steps
    # (mid-epoch 2), then continued by train_oneshot; snapshots do not change the training
    _, whole_dir, whole_result = trained["uniform"]
    cfg = OneShotConfig(**SMALL, rule="uniform", snapshots=(1, 2))
    at_epoch_1 = {}
    steps = []

    def stop(trainer):
        steps.append((trainer.epoch, trainer.step))
        if trainer.epoch == 0 and trainer.step == trainer.steps_per_epoch:
            at_epoch_1.update(clone_state(trainer.supernet))
        if len(steps) == 3:
            trainer.request_stop()

    part = OneShotTrainer(cfg)
    assert part.steps_per_epoch == 2
    assert part.run(tmp_path, progress=False, on_step=stop) is False
    assert steps == [(0, 1), (0, 2), (1, 1)] and at_epoch_1
    assert (part.epoch, part.step) == (1, 1) and (tmp_path / "oneshot.pt").is_file()
    assert (tmp_path / "supernet-e1.pt").is_file()
    assert not (tmp_path / "supernet-e2.pt").exists()
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 1

    result = train_oneshot(cfg, tmp_path, progress=False)
    assert result["status"] == "complete" and result["epoch"] == 2
    assert result["snapshots"] == [str(tmp_path / f"supernet-e{e}.pt") for e in (1, 2)]
    assert [h["loss"] for h in result["history"]] == [h["loss"]
                                                     for h in whole_result["history"]]
    whole_net, whole_cfg, whole_state = load_snapshot(whole_dir / "supernet-e2.pt")
    part_net, part_cfg, _ = load_snapshot(tmp_path / "supernet-e2.pt")
    assert (whole_cfg, part_cfg) == (trained["uniform"][0], cfg)
    assert whole_state["format"] == ONESHOT_FORMAT and whole_state["epoch"] == 2
    assert whole_state["train_seconds"] > 0
    final = clone_state(part_net)
    assert same_state(final, whole_net.state_dict())

    # load_snapshot gives the trainer's supernet at that epoch
    supernet, _, sstate = load_snapshot(tmp_path / "supernet-e1.pt")
    assert sstate["epoch"] == 1
    assert same_state(supernet.state_dict(), at_epoch_1)
    assert not same_state(supernet.state_dict(), final)
    # ... and a checkpoint loads as well: the last epoch's weights, with the training state
    supernet, _, cstate = load_snapshot(tmp_path / "oneshot.pt")
    assert (cstate["epoch"], cstate["step"]) == (2, 0) and "optimizer" in cstate
    assert same_state(supernet.state_dict(), final)


def test_corrupt_checkpoint_is_a_one_line_error_naming_the_file(tmp_path):
    cfg = OneShotConfig(**{**SMALL, "rule": "uniform"})
    path = tmp_path / "oneshot.pt"
    path.write_bytes(b"not a torch file at all")
    for call in (lambda: train_oneshot(cfg, tmp_path, progress=False),
                 lambda: load_snapshot(path)):
        with pytest.raises(NasError) as e:
            call()
        assert "\n" not in str(e.value) and str(path) in str(e.value)
        assert "corrupt" in str(e.value)
    torch.save({"something": "else"}, path)
    with pytest.raises(NasError, match="not a supernet checkpoint"):
        train_oneshot(cfg, tmp_path, progress=False)
    with pytest.raises(NasError, match="missing"):
        load_snapshot(tmp_path / "supernet-e9.pt")


# -- PathScorer ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scorer(trained):
    _, path, _ = trained["uniform"]
    supernet, scfg, _ = load_snapshot(path / "supernet-e2.pt")
    return PathScorer(supernet, scfg, bn_batches=1, images=8)


def test_path_score_is_finite_and_leaves_the_supernet_alone(scorer):
    supernet = scorer.supernet
    supernet.train()
    before = clone_state(supernet)
    spec = scorer.cfg.space_obj().sample(np.random.default_rng(0))
    result = scorer.score(spec)
    assert set(result) == {"metric", "loss", "seconds"}
    assert all(math.isfinite(result[k]) for k in result)
    assert 0 <= result["metric"] <= 100 and result["loss"] > 0 and result["seconds"] > 0
    assert same_state(supernet.state_dict(), before)
    assert supernet.training
    # deterministic
    again = scorer.score(spec)
    assert (again["metric"], again["loss"]) == (result["metric"], result["loss"])


def test_path_scorer_reads_the_held_out_split(scorer, trained):
    cfg = trained["uniform"][0]
    _, weight, arch = split_datasets(cfg.space_obj(), None, seed=cfg.seed,
                                     arch_split=cfg.arch_split, batch_size=cfg.batch_size,
                                     train_samples=cfg.train_samples)
    assert set(scorer.held_out.indices) <= set(arch)
    assert len(scorer.held_out) == min(8, len(arch))
    assert len(scorer.bn) == 1 and scorer.bn[0]["image"].shape[0] == cfg.batch_size


def test_path_model_is_the_standalone_network_with_recomputed_statistics(scorer):
    supernet = scorer.supernet
    space = scorer.cfg.space_obj()
    spec = space.sample(np.random.default_rng(1))
    model = scorer.model(spec)
    assert not model.training

    # by hand: the standalone network, statistics reset and recomputed on the same batches
    reference = supernet.standalone(spec).to(memory_format=torch.channels_last)
    for m in reference.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    reference.train()
    with torch.no_grad():
        for batch in scorer.bn:
            reference(batch["image"])
    reference.eval()
    assert same_state(model.state_dict(), reference.state_dict())
    x = scorer.bn[0]["image"]
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))

    # its weights are the supernet candidate's; its BatchNorm statistics are not
    stats_differ = 0
    for layer, mixed, target in zip(supernet.space_layers, supernet.mixed, spec.layers(),
                                    strict=True):
        index = layer.index(spec.choices[layer.label]) if layer.searchable else 0
        source = mixed.candidate(target.in_chs, index).state_dict()
        mine = model.layer(layer.label).state_dict()
        assert mine.keys() == source.keys()
        for key, value in mine.items():
            if is_bn_stat(key):
                stats_differ += key.endswith("running_mean") and not torch.equal(
                    value, source[key])
            else:
                assert torch.equal(value, source[key]), key
    assert stats_differ > 0


# -- zero-cost proxies ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def zc_space():
    return get_space("cpu-base")


@pytest.fixture(scope="module")
def images(zc_space):
    h, w = zc_space.skeleton.input_size
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 3, h, w, generator=g).contiguous(memory_format=torch.channels_last)


def tiny_model(spec, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PoseNet(spec).to(memory_format=torch.channels_last)


@pytest.mark.parametrize("name", sorted(PROXIES))
@pytest.mark.parametrize("training", [True, False])
def test_proxy_is_finite_and_leaves_the_model_alone(zc_space, images, name, training):
    model = tiny_model(zc_space.sample(np.random.default_rng(0)))
    model.train(training)
    before = clone_state(model)
    value = PROXIES[name](model, images)
    assert isinstance(value, float) and math.isfinite(value)
    assert same_state(model.state_dict(), before)
    assert model.training == training
    assert all(p.grad is None for p in model.parameters())
    assert not images.requires_grad


def test_naswot_is_deterministic(zc_space, images):
    model = tiny_model(zc_space.sample(np.random.default_rng(0)))
    assert naswot(model, images) == naswot(model, images)
    assert naswot(copy.deepcopy(model), images) == naswot(model, images)


def test_synflow_grows_with_width(zc_space, images):
    small = synflow(tiny_model(zc_space.smallest()), images)
    large = synflow(tiny_model(zc_space.largest()), images)
    assert math.isfinite(small) and math.isfinite(large)
    assert large > small


def test_score_all_over_seeds(zc_space, images):
    spec = zc_space.sample(np.random.default_rng(0))
    out = score_all(lambda: PoseNet(spec), images, seeds=(0, 1))
    assert set(out) == set(PROXIES)
    for entry in out.values():
        assert set(entry) == {"value", "values", "seconds"}
        assert len(entry["values"]) == 2 and all(math.isfinite(v) for v in entry["values"])
        assert entry["value"] == pytest.approx(np.mean(entry["values"]))
        assert entry["seconds"] >= 0
    # each seed is its own initialisation; the same seed is the same one
    assert out["synflow"]["values"][0] != out["synflow"]["values"][1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        first = PoseNet(spec).to(memory_format=torch.channels_last)
    assert out["naswot"]["values"][0] == naswot(first, images)
    assert out["synflow"]["values"][0] == synflow(first, images)
    assert out["jacob_cov"]["values"][0] == jacob_cov(first, images)


# -- fidelity ------------------------------------------------------------------------------------
ROWS = [{"key": f"n{i}", "pck": p} for i, p in enumerate([40.0, 55.0, 47.5, 61.0, 52.0, 35.0])]


def test_fidelity_identity_reversed_missing_and_infinite():
    truth = {r["key"]: r["pck"] for r in ROWS}
    scores = {
        "same": dict(truth),
        "reversed": {k: -v for k, v in truth.items()},
        "missing": {k: v for k, v in truth.items() if k not in ("n1", "n4")} | {"other": 1.0},
        "none": {**truth, "n0": None},
        "inf": {**truth, "n2": math.inf, "n3": -math.inf},
    }
    out = {line["proxy"]: line for line in fidelity(ROWS, scores, {"same": "free"})}
    assert list(out) == list(scores)
    assert out["same"]["kendall_tau"] == pytest.approx(1.0)
    assert out["same"]["spearman"] == pytest.approx(1.0)
    assert out["same"]["n"] == 6 and out["same"]["cost"] == "free"
    assert out["same"]["top"]["overlap"] == 1.0
    assert out["reversed"]["kendall_tau"] == pytest.approx(-1.0)
    assert out["reversed"]["spearman"] == pytest.approx(-1.0)
    assert out["reversed"]["cost"] == ""
    assert out["missing"]["n"] == 4 and out["missing"]["kendall_tau"] == pytest.approx(1.0)
    assert out["none"]["n"] == 5
    # infinities are dropped like NaN, not ranked as the best and worst network
    assert out["inf"]["n"] == 4 and out["inf"]["kendall_tau"] == pytest.approx(1.0)


def test_fidelity_with_too_few_networks_is_nan():
    out = fidelity(ROWS, {"two": {"n0": 1.0, "n1": 2.0}}, {})
    assert out[0]["n"] == 2 and math.isnan(out[0]["kendall_tau"])


def test_cache_refuses_another_header(tmp_path):
    path = tmp_path / "zerocost.json"
    header = {"what": "zero-cost", "seeds": (0, 1), "data": "lsp", "limit": None}
    fresh = _cache(path, header)
    assert fresh == {**header, "networks": {}}
    fresh["networks"]["a"] = {"x": 1}
    path.write_text(json.dumps(fresh))
    # tuples and lists are the same once written
    assert _cache(path, header)["networks"] == {"a": {"x": 1}}
    with pytest.raises(NasError) as e:
        _cache(path, {**header, "seeds": [0, 1, 2]})
    assert "seeds=" in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(NasError, match="limit="):
        _cache(path, {**header, "limit": 10})
    with pytest.raises(NasError, match="extra="):
        _cache(path, {**header, "extra": 1})
    path.write_text("{not json")
    with pytest.raises(NasError, match="unreadable"):
        _cache(path, header)


def test_zerocost_columns():
    def entry(value, seconds, n=2):
        return {"value": value, "values": [value] * n, "seconds": seconds}

    cache = {"networks": {
        "a": {"synflow": entry(10.0, 0.5), "naswot": entry(-3.0, 1.0)},
        "b": {"synflow": entry(12.0, 1.5), "naswot": entry(-1.0, 2.0)},
    }}
    scores, seconds = zerocost_columns(cache)
    assert scores == {"synflow": {"a": 10.0, "b": 12.0}, "naswot": {"a": -3.0, "b": -1.0}}
    # mean seconds per network: per-evaluation seconds times the number of seeds
    assert seconds == {"synflow": pytest.approx(2.0), "naswot": pytest.approx(3.0)}
    assert zerocost_columns({"networks": {}}) == ({}, {})
