"""``nas lut build|validate|check``: device latency lookup tables.

``nas lut build --device cpu|cuda[:N] [--runtime torch|onnxruntime [--provider NAME]]
[--space NAME] [--input HxW] [--batch N] [--dtype fp32|fp16] [--threads N] [--out PATH] [--json]``
measures every candidate op of the space on this device in the runtime (PyTorch eager by
default; ONNX Runtime: each op exported to ONNX as ``nas export`` exports networks, opset 20, run
in an InferenceSession with the table's threads and every graph optimisation), resuming a killed
build, and calibrates the table on whole networks.

``nas lut validate LUT [--samples N] [--allow-foreign-lut] [--json]`` measures N random networks
end to end and compares the table's predictions (and a FLOPs-proportional estimate) with the
measurements, after the table's speed probe says it still describes this machine.

``nas lut check LUT [--json]`` runs the table's speed probe alone (a few seconds): the ratio of
its probe networks' latency now to when the table was built. Exit status 0 when it is within
±15%, 1 when the table does not describe this machine now.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lut import probe as lut_probe
from lut.build import build, default_table_path
from lut.device import DTYPES, parse_device
from lut.fingerprint import describe
from lut.probe import PROBE_TOLERANCE, ProbeResult
from lut.runtimes import RUNTIMES, Runtime
from lut.table import LatencyTable
from lut.timing import TimingConfig
from lut.validate import PROBED, preflight, validate_table
from nas.argtypes import input_size, non_negative_int, positive_int
from nas.commands import Result
from supernets.errors import NasError
from supernets.space import PRESETS, SEG_PRESETS, SPACES, get_space


def register(sub) -> None:
    p = sub.add_parser("lut", help="device latency lookup tables (build, validate)",
                       description=__doc__)
    lsub = p.add_subparsers(dest="lut_command", required=True,
                            metavar="{build,validate,check}")

    b = lsub.add_parser("build", help="measure a space's ops on this device",
                        description="Measure every candidate op of a search space on this "
                                    "device and calibrate on whole networks. A killed build "
                                    "resumes where it stopped.")
    b.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    b.add_argument("--runtime", choices=RUNTIMES, default="torch",
                   help="runtime the ops run in: torch (eager, default) or onnxruntime")
    b.add_argument("--provider", metavar="NAME",
                   help="ONNX Runtime execution provider: CPUExecutionProvider (default on "
                        "cpu), CUDAExecutionProvider (default on cuda), "
                        "TensorrtExecutionProvider")
    b.add_argument("--space", default="cpu-base", choices=list(SPACES),
                   help="search space (default: cpu-base)")
    b.add_argument("--preset", choices=[*PRESETS, *SEG_PRESETS],
                   help="dataset input size and joints (pose: mpii, coco, lsp) or classes "
                        "(seg: camvid, cityscapes, voc)")
    b.add_argument("--input", type=input_size, metavar="HxW", help="override the input size")
    b.add_argument("--joints", "--classes", dest="joints", type=positive_int,
                   metavar="N", help="override the joints (pose) or classes (seg)")
    b.add_argument("--batch", type=positive_int, default=1, metavar="N", help="default: 1")
    b.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="default: fp32")
    b.add_argument("--threads", type=positive_int, metavar="N",
                   help="intra-op threads (default: 1; see lut.device.default_threads)")
    b.add_argument("--out", type=Path, metavar="PATH",
                   help="table file (.parquet); default: results/lut/<device>/<space>-...")
    b.add_argument("--rounds", type=positive_int, metavar="N",
                   help=f"timing rounds per row (default: {TimingConfig().rounds})")
    b.add_argument("--cuda-graphs", action="store_true",
                   help="time CUDA-graph replays (GPU only)")
    b.add_argument("--no-resume", dest="resume", action="store_false",
                   help="measure every row again, replacing an existing table")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.set_defaults(handler=run_build)

    v = lsub.add_parser("validate", help="predicted vs measured latency of random networks",
                        description="Measure random networks of the table's space end to end "
                                    "and compare with the table's predictions and with a "
                                    "FLOPs-proportional estimate. Writes <table>.validation"
                                    ".csv/.png/.json next to the table.")
    v.add_argument("table", type=Path, metavar="LUT", help="table file written by nas lut build")
    v.add_argument("--samples", type=positive_int, default=30, metavar="N",
                   help="random networks (default: 30)")
    v.add_argument("--seed", type=non_negative_int, default=1,
                   help="sampling seed (default: 1; the build calibrates with seed 0)")
    v.add_argument("--rounds", type=positive_int, metavar="N",
                   help="timing rounds per network (default: the table's)")
    v.add_argument("--allow-foreign-lut", action="store_true",
                   help="accept a table whose device fingerprint differs from this machine's, "
                        "or whose speed probe is off by more than 15%%")
    # the flag's old name, before every command spelled it as nas search does
    v.add_argument("--allow-foreign", dest="allow_foreign_lut", action="store_true",
                   help=argparse.SUPPRESS)
    v.add_argument("--quiet", action="store_true", help="no progress bar")
    v.add_argument("--json", action="store_true", help="print one JSON object")
    v.set_defaults(handler=run_validate)

    c = lsub.add_parser("check", help="speed probe: does the table still fit this machine?",
                        description="Time the table's probe networks (a few seconds) and "
                                    "compare with their latency when the table was built. Exit "
                                    "status 0 within the tolerance, 1 outside it.")
    c.add_argument("table", type=Path, metavar="LUT", help="table file written by nas lut build")
    c.add_argument("--tolerance", type=_fraction, default=PROBE_TOLERANCE, metavar="F",
                   help="largest accepted |ratio - 1| (default: %(default)s)")
    c.add_argument("--allow-foreign-lut", action="store_true",
                   help="probe a table whose device fingerprint differs from this machine's")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(handler=run_check)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a fraction between 0 and 1, "
                                         "e.g. 0.15")
    return value


def _timing(rounds: int | None, base: dict | None = None, **extra) -> TimingConfig | None:
    if rounds is None and not extra and base is None:
        return None
    fields = {**(base or {}), **extra}
    if rounds is not None:
        fields["rounds"] = rounds
    return TimingConfig(**fields)


def run_build(args) -> Result:
    space = get_space(args.space, preset=args.preset, input_size=args.input,
                      num_joints=args.joints)
    runtime = Runtime.parse(args.runtime, args.provider, parse_device(args.device))
    if args.cuda_graphs and not runtime.is_eager:
        raise NasError("--cuda-graphs: only with --runtime torch (ONNX Runtime captures graphs "
                       "itself, per provider)")
    extra = {"cuda_graphs": True} if args.cuda_graphs else {}
    out = args.out or default_table_path(space, args.device, args.batch, args.dtype,
                                         threads=args.threads, runtime=runtime)
    result = build(space, args.device, batch=args.batch, dtype=args.dtype, threads=args.threads,
                   out=out, progress=not args.quiet, resume=args.resume,
                   timing=_timing(args.rounds, **extra), runtime=runtime)
    table = LatencyTable.load(result.path)
    cal = table.calibration
    residuals = [abs(n["predicted_ms"] - n["measured_ms"]) / n["measured_ms"]
                 for n in cal.networks]
    h, w = space.skeleton.input_size
    text = (f"{'wrote' if result.measured_rows or result.calibrated else 'complete'} "
            f"{result.path}\n"
            f"  {space.name} {h}x{w}, {space.skeleton.outputs}: {result.rows} rows, "
            f"{result.measured_rows} measured now ({result.seconds:.0f} s; "
            f"{table.meta.get('build_seconds', 0):.0f} s in all)\n"
            f"  device {table.device} [{describe(table.fingerprint)}]\n"
            f"  runtime {table.runtime.describe()}\n"
            f"  batch {table.batch}, {table.dtype}, {table.threads} thread(s), clock "
            f"{table.clock}, {table.meta['timing'].get('rounds')} rounds\n"
            f"  calibration: {cal.method} (measured = {cal.a:.4f} x sum of rows {cal.b:+.4f} ms), "
            f"chosen by leave-one-out error on {len(cal.networks)} networks ("
            + ", ".join(f"{k} {100 * v:.1f}%" for k, v in cal.loo.items())
            + f"); largest residual {100 * max(residuals):.1f}%\n"
            f"  speed probe: {len(table.meta['probes']['networks'])} networks, "
            f"{table.meta['probes']['rounds']} rounds (check with: nas lut check {result.path})")
    data = {"path": str(result.path), "rows": result.rows, "measured_rows": result.measured_rows,
            "seconds": result.seconds, "build_seconds": table.meta.get("build_seconds"),
            "space": space.name, "input_size": [h, w], "device": table.device,
            "runtime": table.meta.get("backend") or {"name": "torch"},
            "batch": table.batch, "dtype": table.dtype, "threads": table.threads,
            "clock": table.clock, "fingerprint": table.fingerprint,
            "calibration": {"a": cal.a, "b": cal.b, "method": cal.method, "loo": cal.loo,
                            "networks": len(cal.networks), "max_rel_residual": max(residuals)},
            "probes": table.meta["probes"]}
    return Result(text, data)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _probe_lines(probe: ProbeResult) -> list[str]:
    lines = [f"  speed probe: {probe.describe()}; {'fits' if probe.ok else 'does NOT fit'} "
             f"this machine now ({len(probe.networks)} networks, {probe.rounds} rounds, "
             f"{probe.seconds:.1f} s)"]
    lines += [f"    {n['role'] or '':8s} {n['name']:<24s} then {n['stored_ms']:.3f} ms, now "
              f"{n['measured_ms']:.3f} ms ({n['ratio']:.2f}x)" for n in probe.networks]
    return lines


def run_check(args) -> Result:
    table = LatencyTable.load(args.table, allow_foreign=args.allow_foreign_lut)
    probe = lut_probe.probe_table(table, tolerance=args.tolerance)
    text = "\n".join([f"{table.path}: device {table.device} [{describe(table.fingerprint)}]",
                      *_probe_lines(probe)])
    error = None if probe.ok else (
        f"{table.path} does not describe this machine now: the speed probe measured "
        f"{probe.describe()}; rebuild it with: {table.build_command()} --no-resume")
    return Result(text, probe.to_dict(), status=0 if probe.ok else 1, error=error)


def run_validate(args) -> Result:
    table = LatencyTable.load(args.table, allow_foreign=args.allow_foreign_lut)
    checked = preflight(table, samples=args.samples, seed=args.seed)  # before the probe
    probe = lut_probe.checked_probe(table, args.allow_foreign_lut)
    timing = _timing(args.rounds, {**table.meta.get("timing", {}), "seed": args.seed})
    report = validate_table(table, samples=args.samples, seed=args.seed, timing=timing,
                            progress=not args.quiet,
                            probe=probe.to_dict() if probe else None, checked=checked)
    m = report.metrics
    cal = table.calibration
    cols = ("table", "table_raw", "table_affine", "flops", *((PROBED,) if PROBED in m else ()))
    lines = [f"{table.path}: {args.samples} random networks (seed {args.seed}) measured end to "
             f"end on {table.device} in {table.runtime.describe()}, clock {table.clock}, "
             f"{table.threads} thread(s)",
             *(_probe_lines(probe) if probe else ["  speed probe: skipped (--allow-foreign-lut)"]),
             f"  calibration chosen at build: {cal.method} (leave-one-out mean error "
             + ", ".join(f"{k} {100 * v:.1f}%" for k, v in cal.loo.items()) + ")",
             f"  {'':22s}{'table':>10s}{'sum only':>10s}{'affine':>10s}{'FLOPs':>10s}"
             + (f"{'x probe':>10s}" if PROBED in m else "")]
    for label, key, fmt in (("median |rel. error|", "median_abs_rel_error", _pct),
                            ("p90 |rel. error|", "p90_abs_rel_error", _pct),
                            ("within ±10%", "within_10pct", lambda x: f"{100 * x:.0f}%"),
                            ("Kendall tau", "kendall_tau", lambda x: f"{x:.3f}")):
        lines.append(f"  {label:22s}" + "".join(f"{fmt(m[c][key]):>10s}" for c in cols))
    ref = report.reference
    lines.append(f"  FLOPs estimate scaled from {ref['name']} ({ref['macs'] / 1e6:.1f} M MACs, "
                 f"{ref['measured_ms']:.3f} ms)")
    lines.append(f"  wrote {report.csv_path}, {report.png_path.name}, {report.json_path.name}")
    return Result("\n".join(lines), report.to_dict())
