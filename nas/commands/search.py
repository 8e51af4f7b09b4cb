"""``nas search --task pose --budget 3ms ...``: find an architecture that meets a latency budget."""

from __future__ import annotations

from nas.argtypes import (
    finite_float,
    input_size,
    log_base,
    non_negative_int,
    positive_float,
    positive_int,
)
from nas.commands import INTERRUPTED, Result, given_flags
from nas.search.blackbox import OBJECTIVE_ALIASES, OBJECTIVES, STRATEGIES
from nas.search.budget import format_ms, parse_budgets
from nas.search.oneshot import RULES
from nas.search.rank import DRAWS
from nas.search.relax import MODES
from nas.search.searcher import DEFAULT_SPACES, SearchConfig

DEFAULT_OUT = "runs/search"


def register(sub) -> None:
    p = sub.add_parser("search", help="differentiable search under a latency budget",
                       description=__doc__)
    p.add_argument("--task", help="pose (default) or seg")
    p.add_argument("--budget", help="latency budget with a unit: 3ms, 800us, 0.004s "
                   "(required unless --resume); with --pareto a list: 2ms,3ms,5ms")
    p.add_argument("--strategy", choices=STRATEGIES,
                   help="differentiable (default): one supernet trained with architecture "
                        "weights; optuna: a trained supernet scores networks an Optuna sampler "
                        "proposes (TPE; NSGA-II with --pareto); random: the same with uniform "
                        "draws (the baseline)")
    p.add_argument("--space", help="search space (default cpu-base; seg-small with --task seg)")
    p.add_argument("--input", type=input_size, metavar="HxW", help="override the space's input")
    p.add_argument("--joints", "--classes", dest="joints", type=positive_int,
                   metavar="N", help="override the space's joints (e.g. 14 for LSP) or "
                   "classes (seg, e.g. 19 for Cityscapes)")
    p.add_argument("--lut", help="latency table (default: this device's table for the space, "
                   "built first if missing)")
    p.add_argument("--allow-foreign-lut", action="store_true",
                   help="accept a table measured on another device (no measured latency then)")
    p.add_argument("--device", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--runtime", choices=("torch", "onnxruntime"),
                   help="the runtime the budget is a latency in: torch (eager, the default) or "
                        "onnxruntime (its table, built first if missing; the measured checks "
                        "run the network in ONNX Runtime); default with --lut: the table's")
    p.add_argument("--provider", metavar="NAME",
                   help="ONNX Runtime execution provider (default CPUExecutionProvider, or "
                        "CUDAExecutionProvider with --device cuda)")
    p.add_argument("--threads", type=positive_int, help="CPU threads (default: the table's)")
    p.add_argument("--data", help="dataset path (Leeds Sports Pose folder); default: embedded "
                   "synthetic pose data")
    p.add_argument("--epochs", type=positive_int,
                   help="search epochs, half of them warm-up (default: pose 10; seg enough for "
                        "720 weight steps, at least 10: 40 on CamVid); with --resume, extends the "
                        "search")
    p.add_argument("--warmup-epochs", type=non_negative_int,
                   help="weight-only epochs first (default: half)")
    p.add_argument("--batch-size", type=positive_int, help="batch size (default 16)")
    p.add_argument("--arch-batch-size", type=positive_int,
                   help="batch size of architecture steps (default: half the batch size)")
    p.add_argument("--train-samples", type=positive_int, help="synthetic images (default 1024)")
    p.add_argument("--mode", choices=MODES, help="relaxation (default reinforce)")
    p.add_argument("--arch-samples", type=positive_int,
                   help="--mode reinforce: single paths scored per architecture step (default 4)")
    p.add_argument("--lam-control", choices=("argmax", "expected"),
                   help="steer lambda by how far the expected latency lies outside the window "
                        "(expected, default: a hinge, zero inside it) or by a dual step on the "
                        "most probable network's latency (argmax)")
    p.add_argument("--lam", type=finite_float,
                   help="initial cost weight lambda (default 0.1; adapted)")
    p.add_argument("--tau", type=log_base,
                   help="log base of the cost term, cost in ms (default 15; not 1)")
    p.add_argument("--arch-lr", type=positive_float, help="architecture Adam lr (default 0.05 in "
                   "reinforce mode, 1e-2 in the others)")
    p.add_argument("--rank-samples", type=non_negative_int,
                   help="after the search, rank the derived network and N more drawn from the "
                        "learned probabilities by the supernet's held-out loss (default 48; "
                        "0: derivation alone)")
    p.add_argument("--rank-draw", choices=DRAWS,
                   help="how the ranked networks are drawn: window, from the learned "
                        "probabilities among the networks of the latency window (default); fit, "
                        "each draw fitted into the window by derivation; evolve, a quarter "
                        "drawn as window, the rest mutations of the best scored so far")
    p.add_argument("--rank-finetune", type=non_negative_int, metavar="STEPS",
                   help="then train a shortlist (the best-ranked network of each segmentation "
                        "head family, then the best others) STEPS steps each on its own from "
                        "the supernet's weights and take the best by held-out loss after them "
                        "(default 60 for --task seg, 0 for pose; 0: off)")
    p.add_argument("--rank-finetune-top", type=positive_int, metavar="K",
                   help="at least K networks in that shortlist (default 1: one per head "
                        "family)")
    p.add_argument("--family-epochs", type=non_negative_int, metavar="N",
                   help="then train the supernet N more epochs with the head restricted to "
                        "the family of the shortlist's best, and rank that family's networks "
                        "again by its held-out loss (--task seg; default 0: off)")
    g = p.add_argument_group("optuna and random strategies")
    g.add_argument("--trials", type=positive_int,
                   help="networks inside the window scored by the supernet (proxy evaluations, "
                        "default 200); with --resume, extends the search")
    g.add_argument("--objective", choices=(*OBJECTIVES, *OBJECTIVE_ALIASES, "score"),
                   help="supernet score: held-out task loss (default) or metric, the task's "
                        "(PCK@0.2 for pose, mIoU for seg; pck and miou say the same); score "
                        "(seg, every strategy): search for max mIoU x W(T), "
                        "W(T) = max(0, 1 - max(0, T - 3 ms) / 7 ms), budget 10 ms unless given")
    g.add_argument("--supernet", metavar="PATH",
                   help="a supernet trained before (oneshot.pt or supernet-eN.pt of a run's "
                        "supernet/ folder) instead of training one (--epochs epochs)")
    g.add_argument("--supernet-rule", choices=RULES,
                   help="how the supernet trains: one uniform path per step (default), or the "
                        "sandwich rule (largest, smallest and 2 random paths), -kd: distilled")
    g.add_argument("--storage", metavar="URL",
                   help="the study's storage: default OUT/study.journal; a journal file path, or "
                        "an RDB URL (sqlite:///study.db, postgresql://user:pass@host/db) for "
                        "workers on several machines (each with --supernet of the same file)")
    g.add_argument("--study", metavar="NAME", help="study name in the storage (default "
                   "nas-search)")
    g.add_argument("--pareto", action="store_true",
                   help="search the accuracy/latency front and pick one network per budget of "
                        "--budget 2ms,3ms,5ms (pareto.csv, pareto.png, arch-<budget>.json)")
    g.add_argument("--score-images", type=positive_int,
                   help="held-out training images per proxy evaluation (default 200)")
    p.add_argument("--seed", type=non_negative_int, help="seed of everything random (default 0)")
    p.add_argument("--out", help=f"output directory (default {DEFAULT_OUT})")
    p.add_argument("--resume", metavar="DIR", help="continue the search whose checkpoint is in DIR")
    p.add_argument("--force", action="store_true",
                   help="replace the search in --out (its checkpoint, log, arch and report)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=run)


_CFG_ARGS = ("task", "space", "data", "epochs", "warmup_epochs", "batch_size", "arch_batch_size",
             "train_samples", "mode", "arch_samples", "lam_control", "lam", "tau", "arch_lr",
             "rank_samples", "rank_draw", "rank_finetune", "rank_finetune_top",
             "family_epochs", "seed",
             "device", "runtime", "provider",
             "threads", "strategy", "trials", "objective", "supernet", "supernet_rule",
             "storage", "study", "pareto", "score_images")
# settings read by one kind of strategy only
_DIFFERENTIABLE_ONLY = ("warmup_epochs", "arch_batch_size", "mode", "arch_samples",
                        "lam_control", "lam", "tau", "arch_lr", "rank_samples", "rank_draw",
                        "rank_finetune", "rank_finetune_top", "family_epochs")
_PROPOSING_ONLY = ("trials", "objective", "supernet", "supernet_rule", "storage", "study",
                   "pareto", "score_images")
# what a resumed search takes from its checkpoint; --epochs (differentiable) or --trials
# (optuna, random) extends it, --lut and --allow-foreign-lut only say where its table is
_FIXED_ON_RESUME = ("budget", "input", "joints", "out", "force",
                    *(k for k in _CFG_ARGS if k not in ("epochs", "trials")))


def run(args) -> Result:
    from nas.search.run import search
    from supernets.errors import NasError

    if args.resume:
        fixed = given_flags(args, _FIXED_ON_RESUME)
        if fixed:
            raise NasError(f"--resume {args.resume} continues a search with the settings in its "
                           f"checkpoint; it cannot change {', '.join(fixed)} (only --epochs, to "
                           "extend it)")
        from pathlib import Path

        from nas.search.run_blackbox import STATE_FILE

        proposing = (Path(args.resume) / STATE_FILE).exists()
        wrong = "epochs" if proposing and args.epochs else \
            "trials" if not proposing and args.trials else None
        if wrong:
            raise NasError(f"--resume {args.resume}: --{wrong} does not extend this search "
                           f"(a {'proposing' if proposing else 'differentiable'} one: use "
                           f"--{'trials' if proposing else 'epochs'})")
        report = search(None, args.resume, lut=args.lut, allow_foreign_lut=args.allow_foreign_lut,
                        progress=not args.no_progress, resume=True, epochs=args.epochs,
                        trials=args.trials)
    else:
        if args.budget is None and args.objective == "score":
            args.budget = "10ms"   # the score's W is 0 from 10 ms on: the hard limit
        if args.budget is None:
            raise NasError("--budget is required (e.g. --budget 3ms), unless --resume DIR")
        strategy = args.strategy or "differentiable"
        foreign = given_flags(args, _PROPOSING_ONLY if strategy == "differentiable"
                              else _DIFFERENTIABLE_ONLY)
        if args.objective == "score":
            foreign = [f for f in foreign if f != "--objective"]
        if foreign:
            raise NasError(f"{foreign[0]} is not a setting of --strategy {strategy}")
        budgets = parse_budgets(args.budget)
        kwargs = {k: getattr(args, k) for k in _CFG_ARGS
                  if getattr(args, k) is not None and getattr(args, k) is not False}
        if args.space is None and args.task is not None:
            kwargs["space"] = DEFAULT_SPACES.get(args.task, args.task)
        cfg = SearchConfig(budget_ms=max(budgets), budgets_ms=budgets if len(budgets) > 1
                           else None, input_size=args.input, num_joints=args.joints, **kwargs)
        report = search(cfg, args.out or DEFAULT_OUT, lut=args.lut,
                        allow_foreign_lut=args.allow_foreign_lut, progress=not args.no_progress,
                        force=args.force)
    if report.get("status") == "interrupted":
        return Result(f"search interrupted; checkpoint {report['checkpoint']}; continue with: "
                      f"{report['resume']}", report, status=INTERRUPTED)
    text = _text_proposing(report) if "strategy" in report else _text(report)
    over = [p for p in report.get("picks") or [] if p["verdict"] == "over_budget"]
    if report.get("picks") and over:
        return Result(text, report, status=EXIT_OVER_BUDGET,
                      error="; ".join(f"budget {format_ms(p['budget_ms'])}: the pick measured "
                                      f"{format_ms(p['measured_ms'])} = "
                                      f"{p['measured_over_budget']:.2f}x (no arch file written)"
                                      for p in over))
    if report.get("verdict") == "over_budget" and not report.get("picks"):
        return Result(text, report, status=EXIT_OVER_BUDGET, error=_over_budget(report))
    return Result(text, report)


EXIT_OVER_BUDGET = 3


def _over_budget(r: dict) -> str:
    space = r["arch"].get("space") or "the space"
    fastest = r.get("fastest_measured_ms")
    return (f"the selected network measured {format_ms(r['measured_ms'])} = "
            f"{r['measured_over_budget']:.2f}x the {format_ms(r['budget_ms'])} budget after "
            f"{len(r['measure_checks'])} measured network(s); the fastest network of {space} "
            f"measures {format_ms(fastest) if fastest else '?'} here; --budget "
            f"{format_ms(r['suggested_budget_ms'])} would be met by this network "
            f"(no arch.json written; details in {r['out']}/report.json)")


def _text_proposing(r: dict) -> str:
    s = r["search"]
    lines = [f"strategy     {r['strategy']} ({s['sampler']}), {s['evaluations']} networks scored "
             f"by the supernet, {s['proposed']} proposed ({s['outside_window']} outside the "
             f"window, {s['repeats']} repeats); study {s['study']} in {s['storage']}",
             f"supernet     {s['supernet']['rule']} rule, {s['supernet']['epochs']} epochs "
             f"({s['supernet']['path']})"]
    picks = r.get("picks") or [{**r, "arch_file": f"{r['out']}/arch.json", "choices": None}]
    for p in picks:
        w = p["window_ms"]
        lines.append(f"budget       {format_ms(p['budget_ms'])}"
                     + (f"   window {format_ms(w[0])} - {format_ms(w[1])}" if w else
                        "   (every architecture fits: searched for accuracy alone)"))
        lines.append(f"  pick       predicted {format_ms(p['predicted_ms'])}, supernet loss "
                     f"{p['proxy']['loss']:.4e}, {r.get('metric_name', 'PCK@0.2')} "
                     f"{p['proxy']['metric']:.2f}")
        if p["measured_ms"] is not None:
            lines.append(f"  measured   {format_ms(p['measured_ms'])} = "
                         f"{p['measured_over_budget']:.3f} x budget   verdict: {p['verdict']}")
        else:
            lines.append("  measured   - (table from another device: verdict unmeasured)")
        if p["verdict"] != "over_budget":
            lines.append(f"  written    {p.get('arch_file') or r['out'] + '/arch.json'}")
    if r.get("front"):
        lines.append(f"front        {len(r['front'])} networks in {r['out']}/pareto.csv "
                     "(pareto.png)")
    lines.append(f"MACs {r['macs'] / 1e6:.1f} M, params {r['params'] / 1e6:.3f} M"
                 + (" (the largest budget's pick)" if r.get("picks") else ""))
    lines.append("choices:")
    lines += [f"  {x['label']:<16} {x['op']}" for x in r["layers"]]
    return "\n".join(lines)


def _text(r: dict) -> str:
    over = r.get("verdict") == "over_budget"
    lines = [f"architecture: {r['out']}/"
             + ("report.json (over budget: no arch.json)" if over else
                "arch.json  (report.json, log.jsonl, search.png beside it)"),
             f"budget       {format_ms(r['budget_ms'])}"
             + ("   (every architecture fits: searched for accuracy alone)" if r["accuracy_only"]
                else f"   window {format_ms(r['window_ms'][0])} - {format_ms(r['window_ms'][1])}"),
             f"predicted    {format_ms(r['predicted_ms'])}"
             f"   (argmax {format_ms(r['argmax_predicted_ms'])}, "
             f"{len(r['changed_from_argmax'])} layers moved to fit the window)"]
    if r["measured_ms"] is not None:
        lines.append(f"measured     {format_ms(r['measured_ms'])}   "
                     f"= {r['measured_over_budget']:.3f} x budget   verdict: {r['verdict']}")
        checks = r.get("measure_checks", [])
        if len(checks) > 1:
            lines += [f"             (measured network {i}: predicted "
                      f"{format_ms(c['predicted_ms'])}, measured {format_ms(c['measured_ms'])})"
                      for i, c in enumerate(checks, 1)]
    else:
        lines.append("measured     - (table from another device: verdict unmeasured)")
    probe = r.get("speed_probe")
    if probe:
        lines.append(f"speed probe  {probe['ratio']:.2f}x the table's stored probe timings")
    if r.get("proxy_loss") is not None:
        lines.append(f"selected by  {r['selected_by']}, held-out loss {r['proxy_loss']:.3e}"
                     + (f" ({r['finetune_loss']:.3e} after {r['finetune_steps']} steps of its "
                        "own)" if r.get("finetune_loss") is not None else ""))
    lines.append(f"MACs {r['macs'] / 1e6:.1f} M, params {r['params'] / 1e6:.3f} M")
    lines.append("choices:")
    lines += [f"  {x['label']:<16} {x['op']:<18} p={x['prob']:.3f}" for x in r["layers"]]
    return "\n".join(lines)
