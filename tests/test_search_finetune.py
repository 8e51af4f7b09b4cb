"""The shortlist's own training before a search's pick (nas.search.rank, step 4): head
families, the family draws, the shortlist and the fine-tuned loss."""

import numpy as np
import pytest
import torch

from nas.search.rank import family_draws, finetune_loss, shortlist
from nas.tasks.seg.task import SEG
from supernets.space import SearchSpace, get_space
from supernets.spec import Skeleton, Stage
from supernets.supernet import SuperNet

HEADS = ("seg_tc1_up_dw_sic_w8", "seg_tc1_up_plain_w8", "seg_tc2_up_plain_w8", "seg_lraspp_w8",
         "seg_aspp_w8")


@pytest.fixture(scope="module")
def space():
    sk = Skeleton(input_size=(32, 48), num_joints=5, stem_width=8,
                  stages=(Stage(8, 1, 2), Stage(16, 2, 2), Stage(24, 1, 2)), task="seg")
    return SearchSpace("tiny-seg", sk, backbone_ops=("mb_k3_e3", "mb_k5_e3", "skip"),
                       seg_heads=HEADS)


@pytest.fixture(scope="module")
def predictor(space, tmp_path_factory):
    from conftest import macs_table

    from lut import LatencyPredictor, LatencyTable
    path = macs_table(space, tmp_path_factory.mktemp("lut"))
    return LatencyPredictor(LatencyTable.load(path, allow_foreign=True))


def test_head_families_group_a_seg_space_heads_and_a_pose_space_has_none(space):
    label, families = space.head_families()
    assert label == "head"
    assert families == {"tc1": HEADS[:2], "tc2": HEADS[2:3], "lraspp": HEADS[3:4],
                        "aspp": HEADS[4:]}
    assert get_space("cpu-small").head_families() == (None, {})
    _, mbv2 = get_space("seg-mbv2").head_families()
    assert {f: len(v) for f, v in mbv2.items()} == {"tc1": 24, "tc2": 24, "lraspp": 4, "aspp": 4}


def collapsed_probs(space, head="seg_tc1_up_dw_sic_w8"):
    """Probabilities as a search that settled on one head leaves them."""
    probs = {}
    for layer in space.choice_layers():
        p = torch.full((len(layer.candidates),), 1.0 / len(layer.candidates))
        if layer.label == "head":
            p = torch.tensor([0.999 if n == head else 0.001 / (len(p) - 1) for n in layer.names])
        probs[layer.label] = p
    return probs


def test_family_draws_bring_in_the_families_the_ranking_left_out(space, predictor):
    probs = collapsed_probs(space)
    found = [{"spec": space.spec({**space.sample(np.random.default_rng(0)).choices,
                                  "head": HEADS[0]}, "a"), "source": "derived"}]
    drawn = family_draws(space, probs, predictor, None, found, seed=0, name="n", per_family=3)
    fams = {c["source"] for c in drawn}
    assert fams == {"family tc2", "family lraspp", "family aspp"}  # tc1 was there already
    _, families = space.head_families()
    for c in drawn:
        assert c["spec"].choices["head"] in families[c["source"].split()[1]]
        assert c["predicted_ms"] == pytest.approx(predictor.latency(c["spec"]))
    keys = [tuple(sorted(c["spec"].choices.items())) for c in found + drawn]
    assert len(keys) == len(set(keys))
    again = family_draws(space, probs, predictor, None, found, seed=0, name="n", per_family=3)
    assert [c["spec"].choices for c in again] == [c["spec"].choices for c in drawn]
    # inside a window: only networks of the window, and a family with none there is left out
    lat = sorted(predictor.latency(c["spec"]) for c in drawn)
    window = (lat[0], lat[len(lat) // 2])
    inside = family_draws(space, probs, predictor, window, found, seed=0, name="n")
    assert all(window[0] <= c["predicted_ms"] <= window[1] for c in inside)
    # a pose space has no head families: nothing to add
    pose = get_space("cpu-small")
    assert family_draws(pose, {}, predictor, None, [], seed=0, name="n") == []


def test_shortlist_takes_the_best_of_each_family_then_the_best_others(space):
    rng = np.random.default_rng(1)

    def cand(head, loss):
        return {"spec": space.spec({**space.sample(rng).choices, "head": head}, head),
                "proxy_loss": loss}

    ranked = [cand(HEADS[0], 1.0), cand(HEADS[1], 1.1), cand(HEADS[0], 1.2),
              cand(HEADS[3], 1.3), cand(HEADS[2], 1.4), cand(HEADS[3], 1.5)]
    got = shortlist(space, ranked, top=4)
    # tc1, lraspp, tc2 families' best (no aspp among them), then the best other: rank order
    assert [c["proxy_loss"] for c in got] == [1.0, 1.1, 1.3, 1.4]
    assert [c["proxy_loss"] for c in shortlist(space, ranked, top=1)] == [1.0, 1.3, 1.4]
    assert [c["proxy_loss"] for c in shortlist(space, ranked, top=5)] == [1.0, 1.1, 1.2, 1.3,
                                                                          1.4]
    pose = get_space("cpu-small")
    pose_ranked = [{"spec": pose.sample(np.random.default_rng(i)), "proxy_loss": float(i)}
                   for i in range(6)]
    assert [c["proxy_loss"] for c in shortlist(pose, pose_ranked, top=3)] == [0.0, 1.0, 2.0]


def seg_batches(space, n, seed, size=4):
    g = torch.Generator().manual_seed(seed)
    sk = space.skeleton
    return [{"image": torch.randn(size, 3, *sk.input_size, generator=g),
             "label": torch.randint(0, sk.num_classes, (size, *sk.input_size), generator=g)}
            for _ in range(n)]


def test_finetune_loss_trains_a_copy_reproducibly_and_leaves_the_supernet(space):
    torch.manual_seed(0)
    supernet = SuperNet(space)
    train_set = [{"image": b["image"][i], "label": b["label"][i]}
                 for b in seg_batches(space, 3, 1) for i in range(4)]
    held_out = seg_batches(space, 2, 2)
    spec = space.spec({**space.sample(np.random.default_rng(3)).choices, "head": HEADS[3]}, "x")
    before = {k: v.clone() for k, v in supernet.state_dict().items()}

    def run(steps, seed=0):
        return finetune_loss(supernet, spec, train_set, held_out, SEG.loss, steps=steps,
                             batch_size=4, lr=1e-2, weight_decay=0.0, seed=seed, epoch=1,
                             device="cpu")

    trained = run(5)
    after = supernet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert run(5) == pytest.approx(trained, rel=1e-6)        # the same batches, the same result
    assert run(5, seed=1) != pytest.approx(trained, rel=1e-6)
    untrained = run(0)
    assert untrained != pytest.approx(trained, rel=1e-3)
    model = supernet.standalone(spec).eval()
    with torch.no_grad():
        plain = np.mean([float(SEG.loss(model(b["image"]), b)) for b in held_out])
    assert untrained == pytest.approx(plain, rel=1e-5)       # 0 steps: the copy as it is
