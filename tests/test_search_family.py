"""Step 5 of a segmentation search (nas.search.family): the winning head family's supernet
training and ranking, its defaults, its checkpoint and resume."""

import pytest
import torch

import nas.search.family as family_mod
from nas.search import SearchConfig
from nas.search.family import FAMILY_FILE, load_family_state
from nas.search.run import search
from supernets.errors import NasError
from supernets.space import get_space

SEG = dict(budget_ms=10.0, task="seg", space="seg-small", input_size=(32, 48), epochs=2,
           train_samples=24, batch_size=8, objective="score", rank_samples=6, seed=1,
           family_epochs=1)


@pytest.fixture(scope="module")
def lut(tmp_path_factory):
    from conftest import macs_table

    return str(macs_table(get_space("seg-small", input_size=(32, 48)),
                          tmp_path_factory.mktemp("lut")))


def test_family_epochs_are_off_by_default_and_refused_where_the_stage_cannot_run():
    assert SearchConfig(budget_ms=5.0).family_epochs == 0
    seg = {"budget_ms": 5.0, "task": "seg", "space": "seg-small"}
    assert SearchConfig(**seg).family_epochs == 0
    assert SearchConfig(**seg, family_epochs=5).family_epochs == 5
    with pytest.raises(NasError, match="--family-epochs -1: expected an integer, 0 or more"):
        SearchConfig(**seg, family_epochs=-1)
    with pytest.raises(NasError, match="--family-epochs 2: space cpu-small has one head family"):
        SearchConfig(budget_ms=5.0, space="cpu-small", family_epochs=2)
    for off in ({"rank_finetune": 0}, {"rank_samples": 0}):
        with pytest.raises(NasError, match="--family-epochs 2: needs the ranking and its "
                                           "shortlist step"):
            SearchConfig(**seg, family_epochs=2, **off)


def test_the_family_of_the_shortlists_best_trains_and_ranks_first(lut, tmp_path):
    out = tmp_path / "s"
    report = search(SearchConfig(**SEG), out, lut=lut, allow_foreign_lut=True, progress=False)
    stage = report["family_stage"]
    tuned = [r for r in report["ranking"] if r["finetune_loss"] is not None]
    best_tuned = min(tuned, key=lambda r: r["finetune_loss"])
    head = best_tuned["choices"]["head"]
    _, families = get_space("seg-small").head_families()
    assert head in families[stage["family"]] and stage["heads"] == list(families[stage["family"]])
    assert stage["epochs"] == 1 and stage["steps"] > 0 and stage["seconds"] > 0
    # the family's networks first, by the family supernet's loss; then everyone else
    scored = report["ranking"][:stage["candidates"]]
    assert all(r["family_loss"] is not None and r["choices"]["head"] in stage["heads"]
               for r in scored)
    assert [r["family_loss"] for r in scored] == sorted(r["family_loss"] for r in scored)
    assert all(r["family_loss"] is None for r in report["ranking"][stage["candidates"]:])
    assert best_tuned["family_loss"] is not None   # the shortlist's winner is ranked again
    assert stage["candidates"] > 1 + sum(r["source"] == "derived" for r in scored)
    assert [r["rank"] for r in report["ranking"]] == list(range(1, len(report["ranking"]) + 1))
    assert report["arch"]["choices"] == scored[0]["choices"]
    assert report["family_loss"] == scored[0]["family_loss"]
    assert f"the {stage['family']} family's supernet (1 epochs)" in report["selected_by"]
    assert (out / FAMILY_FILE).is_file()


def test_the_default_leaves_the_stage_out(lut, tmp_path):
    report = search(SearchConfig(**dict(SEG, family_epochs=0)), tmp_path / "s", lut=lut,
                    allow_foreign_lut=True, progress=False)
    assert report["family_stage"] is None and report["family_loss"] is None
    assert "family" not in report["selected_by"] and "own training" in report["selected_by"]
    assert not (tmp_path / "s" / FAMILY_FILE).exists()


def test_a_stop_in_the_family_stage_resumes_to_the_same_ranking(lut, tmp_path, monkeypatch):
    cfg = dict(SEG, family_epochs=2)
    kw = dict(lut=lut, allow_foreign_lut=True, progress=False)
    full = search(SearchConfig(**cfg), tmp_path / "full", **kw)
    train_epoch = family_mod._train_epoch

    def stop_at_second(searcher, heads, label, epoch, bar):
        if epoch == 1:
            searcher.request_stop()
        return train_epoch(searcher, heads, label, epoch, bar)

    monkeypatch.setattr(family_mod, "_train_epoch", stop_at_second)
    cut = tmp_path / "cut"
    stopped = search(SearchConfig(**cfg), cut, **kw)
    assert stopped["status"] == "interrupted" and stopped["checkpoint"] == str(cut / FAMILY_FILE)
    assert not (cut / "arch.json").exists() and not (cut / "report.json").exists()
    assert torch.load(cut / FAMILY_FILE, weights_only=True)["epoch"] == 1
    monkeypatch.setattr(family_mod, "_train_epoch", train_epoch)
    resumed = search(None, cut, resume=True, **kw)
    assert resumed["arch"]["choices"] == full["arch"]["choices"]
    assert [r["choices"] for r in resumed["ranking"]] == [r["choices"] for r in full["ranking"]]
    assert ([r["family_loss"] for r in resumed["ranking"]]
            == pytest.approx([r["family_loss"] for r in full["ranking"]], nan_ok=True))
    assert resumed["family_stage"]["family"] == full["family_stage"]["family"]


def test_a_family_checkpoint_of_other_settings_or_corrupt_is_refused(lut, tmp_path):
    from nas.search.run import prepare

    out = tmp_path / "s"
    search(SearchConfig(**dict(SEG, family_epochs=1)), out, lut=lut, allow_foreign_lut=True,
           progress=False)
    other = prepare(SearchConfig(**dict(SEG, family_epochs=3)), lut=lut, allow_foreign_lut=True,
                    progress=False)
    with pytest.raises(NasError, match=f"{out / FAMILY_FILE}: written by a search with other"):
        load_family_state(out, other)
    (out / FAMILY_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(NasError, match=f"{out / FAMILY_FILE}: corrupt"):
        load_family_state(out, other)


@pytest.mark.parametrize("argv, message", [
    (["--family-epochs", "2"], "--family-epochs 2: space cpu-base has one head family"),
    (["--task", "seg", "--family-epochs", "2", "--rank-finetune", "0"],
     "--family-epochs 2: needs the ranking and its shortlist step"),
    (["--task", "seg", "--family-epochs", "-1"], "argument --family-epochs: '-1'"),
])
def test_the_cli_refuses_a_family_stage_that_cannot_run_in_one_line(argv, message, tmp_path,
                                                                    capsys):
    from nas.cli import main

    out = tmp_path / "s"
    try:
        code = main(["search", "--budget", "5ms", "--out", str(out), *argv])
    except SystemExit as e:   # argparse's own refusals
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
