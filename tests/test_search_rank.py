"""Ranking candidates with the supernet after a search (nas.search.rank)."""

import numpy as np
import pytest
import torch

from nas.search.rank import candidates, score
from nas.tasks.pose import heatmap_loss
from nas.tasks.pose.task import POSE
from supernets.errors import NasError
from supernets.space import get_space
from supernets.supernet import SuperNet

INPUT = (64, 64)


@pytest.fixture(scope="module")
def space():
    return get_space("cpu-small", input_size=INPUT)


@pytest.fixture(scope="module")
def predictor(space, tmp_path_factory):
    from conftest import macs_table

    from lut import LatencyPredictor, LatencyTable
    path = macs_table(space, tmp_path_factory.mktemp("lut"))
    return LatencyPredictor(LatencyTable.load(path, allow_foreign=True))


def random_probs(space, seed):
    g = torch.Generator().manual_seed(seed)
    return {layer.label: torch.softmax(torch.randn(len(layer.candidates), generator=g), 0)
            for layer in space.choice_layers()}


def middle_window(space, predictor):
    lat = sorted(predictor.latency(space.sample(np.random.default_rng(i))) for i in range(50))
    return 0.9 * lat[25], lat[25]


@pytest.mark.parametrize("draw", ["window", "fit"])
def test_candidates_are_distinct_in_window_and_reproducible(space, predictor, draw):
    probs = random_probs(space, 0)
    window = middle_window(space, predictor)
    found = candidates(space, probs, predictor, window, samples=12, seed=3, name="n", draw=draw)
    assert found[0]["source"] == "derived"
    assert 2 <= len(found) <= 13 and all(c["source"] == "sampled" for c in found[1:])
    if draw == "window":
        assert len(found) == 13
    keys = [tuple(sorted(c["spec"].choices.items())) for c in found]
    assert len(set(keys)) == len(keys)
    for c in found:
        assert window[0] <= c["predicted_ms"] <= window[1]
        assert c["predicted_ms"] == pytest.approx(predictor.latency(c["spec"]))
    again = candidates(space, probs, predictor, window, samples=12, seed=3, name="n", draw=draw)
    assert [c["spec"].choices for c in again] == [c["spec"].choices for c in found]
    other = candidates(space, probs, predictor, window, samples=12, seed=4, name="n", draw=draw)
    assert [c["spec"].choices for c in other] != [c["spec"].choices for c in found]


def test_window_draws_follow_the_learned_probabilities(space, predictor):
    """Drawn among the window's networks with the probabilities as weights: a layer whose
    probability sits on one candidate takes it in most draws, where uniform draws would take it
    about once in its number of candidates."""
    window = middle_window(space, predictor)
    probs = {layer.label: torch.full((len(layer.candidates),), 1.0 / len(layer.candidates))
             for layer in space.choice_layers()}
    layer = space.choice_layers()[1]
    favoured = layer.candidates[1].name
    probs[layer.label] = torch.tensor([0.9 if i == 1 else 0.1 / (len(layer.candidates) - 1)
                                       for i in range(len(layer.candidates))])

    def share(p):
        found = candidates(space, p, predictor, window, samples=60, seed=0, name="n")[1:]
        return np.mean([c["spec"].choices[layer.label] == favoured for c in found])

    uniform = {lb: torch.full_like(v, 1.0 / len(v)) for lb, v in probs.items()}
    assert share(probs) > 0.6 > 0.4 > share(uniform)


def test_unknown_draw_is_refused(space, predictor):
    with pytest.raises(NasError, match="rank_draw 'best'"):
        candidates(space, random_probs(space, 0), predictor, None, samples=2, seed=0,
                   name="n", draw="best")


def _batches(space, n, seed):
    g = torch.Generator().manual_seed(seed)
    sk = space.skeleton
    h, w = sk.heatmap_size
    return [{"image": torch.randn(4, 3, *sk.input_size, generator=g),
             "target": torch.rand(4, sk.num_joints, h, w, generator=g),
             "target_weight": torch.ones(4, sk.num_joints)} for _ in range(n)]


def test_score_is_the_standalone_loss_after_bn_recalibration(space):
    """The path's score equals the standalone network's loss (same weights) with BatchNorm
    statistics recomputed on the same batches, and the supernet is left as it was."""
    torch.manual_seed(0)
    supernet = SuperNet(space)
    supernet.train()
    bn, held_out = _batches(space, 3, 1), _batches(space, 2, 2)
    spec = space.sample(np.random.default_rng(5))
    before = {k: v.clone() for k, v in supernet.state_dict().items()}

    got = score(supernet, spec, bn, held_out, POSE.loss)

    assert supernet.training
    after = supernet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    model = supernet.standalone(spec)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for b in bn:
            model(b["image"])
        model.eval()
        losses = [float(heatmap_loss(model(b["image"]), b["target"], b["target_weight"]))
                  for b in held_out]
    assert got == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    other = space.sample(np.random.default_rng(6))
    assert score(supernet, other, bn, held_out, POSE.loss) != pytest.approx(got, rel=1e-6)


def _distance(a, b) -> int:
    return sum(a.choices[k] != b.choices[k] for k in a.choices)


def test_evolve_scores_as_it_draws_distinct_networks_of_the_window(space, predictor):
    """draw="evolve": the derived network, a quarter drawn from the probabilities, the rest
    mutations, each scored once in draw order; all distinct, inside the window, reproducible."""
    probs = random_probs(space, 1)
    window = middle_window(space, predictor)
    seen = []

    def evaluate(spec):
        seen.append(spec)
        return float(len(seen))          # the earliest drawn scores best: parents stay early

    found = candidates(space, probs, predictor, window, samples=16, seed=2, name="n",
                       draw="evolve", evaluate=evaluate)
    assert len(found) == 17 and len(seen) == 17
    assert [c["source"] for c in found] == ["derived"] + ["sampled"] * 4 + ["mutated"] * 12
    assert [c["proxy_loss"] for c in found] == [float(i + 1) for i in range(17)]
    keys = [tuple(sorted(c["spec"].choices.items())) for c in found]
    assert len(set(keys)) == len(keys)
    assert all(window[0] <= c["predicted_ms"] <= window[1] for c in found)
    # mutations of the four best (the first four): a few layers away from one of them
    n_layers = len(space.choice_layers())
    for c in found[5:]:
        assert min(_distance(c["spec"], p["spec"]) for p in found[:4]) <= n_layers // 2
    seen.clear()
    again = candidates(space, probs, predictor, window, samples=16, seed=2, name="n",
                       draw="evolve", evaluate=evaluate)
    assert [c["spec"].choices for c in again] == [c["spec"].choices for c in found]
    with pytest.raises(NasError, match="evaluate"):
        candidates(space, probs, predictor, window, samples=4, seed=0, name="n", draw="evolve")


def test_evolve_finds_better_networks_than_window_draws_with_the_same_evaluations(space,
                                                                                    predictor):
    """On a proxy that rewards closeness to a hidden network, the best of 24 evolved networks
    beats the best of 24 window draws on most seeds (the point of evolving)."""
    probs = {layer.label: torch.full((len(layer.candidates),), 1.0 / len(layer.candidates))
             for layer in space.choice_layers()}
    window = middle_window(space, predictor)
    wins = 0
    for seed in range(6):
        target = space.sample(np.random.default_rng(100 + seed))

        def evaluate(spec, target=target):
            return float(_distance(spec, target))

        evolved = candidates(space, probs, predictor, window, samples=24, seed=seed, name="n",
                             draw="evolve", evaluate=evaluate)
        drawn = candidates(space, probs, predictor, window, samples=24, seed=seed, name="n")
        best_evolved = min(c["proxy_loss"] for c in evolved)
        best_drawn = min(evaluate(c["spec"]) for c in drawn)
        wins += best_evolved < best_drawn
    assert wins >= 4
