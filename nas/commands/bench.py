"""``nas bench MODEL [--runtime torch|onnxruntime] [--provider NAME] [--device cpu|cuda[:N]]
[--batch N] [--threads N] [--input HxW] [--cuda-graphs] [--lut TABLE] [--json]``: end-to-end
latency (median, p10, p90) and peak memory of one model on this machine, with its fingerprint.

MODEL is an arch JSON, a named arch (``mobilenetv2``), a ``nas.model/1`` checkpoint (.pt) or an
.onnx file (ONNX Runtime only). Timed with the tables' method among random networks of its
skeleton, as ``nas lut validate`` times its networks (see ``lut.bench``): the command to check a
latency claim of ours, or a table's prediction (``--lut``: runtime, device, batch, threads and
timing, CUDA-graph replays included, are the table's, and its prediction for the model is
printed beside the measurement).
"""

from __future__ import annotations

from pathlib import Path

from lut.device import DTYPES
from lut.runtimes import RUNTIMES
from nas.argtypes import input_size, positive_int
from nas.commands import Result


def register(sub) -> None:
    p = sub.add_parser("bench", help="measure one model's latency and memory on this machine",
                       description=__doc__)
    p.add_argument("model", metavar="MODEL",
                   help="arch JSON, named arch (mobilenetv2), nas.model/1 checkpoint (.pt) or "
                        ".onnx file")
    p.add_argument("--runtime", choices=RUNTIMES,
                   help="torch (eager; default) or onnxruntime (default for an .onnx file)")
    p.add_argument("--provider", metavar="NAME",
                   help="ONNX Runtime execution provider (default CPUExecutionProvider, "
                        "CUDAExecutionProvider with --device cuda)")
    p.add_argument("--device", help="cpu (default) or cuda[:N]")
    p.add_argument("--batch", type=positive_int, metavar="N", help="batch size (default 1)")
    p.add_argument("--dtype", choices=list(DTYPES), help="default fp32")
    p.add_argument("--threads", type=positive_int, metavar="N",
                   help="intra-op threads (default 1, as the tables)")
    p.add_argument("--input", type=input_size, metavar="HxW",
                   help="input size (default: the model's)")
    p.add_argument("--rounds", type=positive_int, metavar="N", help="timing rounds (default 100)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="on CUDA, time CUDA-graph replays (as a --cuda-graphs table)")
    p.add_argument("--alone", action="store_true",
                   help="time the model alone, not interleaved with random networks")
    p.add_argument("--lut", metavar="TABLE",
                   help="compare with this table's prediction (its runtime and settings apply)")
    p.add_argument("--allow-foreign-lut", action="store_true",
                   help="accept a --lut table measured on another device")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=run)


def _settings(args, table, model_is_onnx: bool):
    """Runtime, device, batch, dtype and threads: the flags, else the table's, else defaults."""
    from lut.device import parse_device
    from lut.runtimes import Runtime
    from supernets.errors import NasError

    device = args.device or (table.device if table is not None else "cpu")
    dev = parse_device(device)
    if table is not None:
        trt = table.runtime
        if args.runtime and (args.runtime, args.provider or trt.provider) != (trt.name,
                                                                              trt.provider):
            raise NasError(f"--lut {args.lut}: the table was measured in {trt.describe()}, not "
                           f"with --runtime {args.runtime}"
                           + (f" --provider {args.provider}" if args.provider else "")
                           + f"; pass{trt.flags() or ' --runtime torch'} or another table")
        for flag, value, want in (("--device", device, table.device),
                                  ("--batch", args.batch, table.batch),
                                  ("--dtype", args.dtype, table.dtype),
                                  ("--threads", args.threads, table.threads)):
            if value is not None and str(value) != str(want) and not (
                    flag == "--device" and parse_device(value) == parse_device(want)):
                raise NasError(f"--lut {args.lut}: the table was measured with {flag} {want}, "
                               f"not {value}")
        runtime = trt if args.runtime is None else Runtime.parse(args.runtime, args.provider, dev)
        return runtime, table.device, table.batch, table.dtype, table.threads
    name = args.runtime or ("onnxruntime" if model_is_onnx else "torch")
    runtime = Runtime.parse(name, args.provider, dev)
    return runtime, device, args.batch or 1, args.dtype or "fp32", args.threads


def _timing_fields(args, table) -> dict:
    """The table's timing (CUDA-graph replays for a --cuda-graphs table, its clock), so that
    measured and predicted mean the same thing; --rounds and --cuda-graphs on top."""
    from supernets.errors import NasError

    fields = dict(table.meta.get("timing", {})) if table is not None else {}
    fields.pop("seed", None)
    if args.rounds:
        fields["rounds"] = args.rounds
    if args.cuda_graphs:
        if table is not None and not fields.get("cuda_graphs"):
            raise NasError(f"--cuda-graphs: the table {args.lut} was timed without CUDA graphs")
        fields["cuda_graphs"] = True
    if fields.get("cuda_graphs") and not (args.device or (table.device if table else "cpu")
                                          ).startswith("cuda"):
        raise NasError("--cuda-graphs: only with --device cuda")
    return fields


def run(args) -> Result:
    from lut.bench import bench, load_bench_model
    from lut.fingerprint import describe
    from lut.predictor import LatencyPredictor
    from lut.table import LatencyTable
    from lut.timing import TimingConfig
    from supernets.errors import NasError

    table = None
    if args.lut:
        table = LatencyTable.load(args.lut, allow_foreign=args.allow_foreign_lut)
    runtime, device, batch, dtype, threads = _settings(args, table,
                                                       Path(args.model).suffix == ".onnx")
    model = load_bench_model(args.model, input_size=args.input, batch=batch)
    predicted = None
    if table is not None:
        if model.spec is None:
            raise NasError(f"--lut {args.lut}: {args.model} carries no arch (no nas.arch "
                           "metadata), so the table cannot predict it")
        t_in = table.space.skeleton.input_size
        if tuple(model.input_size) != tuple(t_in):
            raise NasError(f"--lut {args.lut}: the table is for {t_in[0]}x{t_in[1]} inputs, "
                           f"the model takes {model.input_size[0]}x{model.input_size[1]} "
                           f"(pass --input {t_in[0]}x{t_in[1]} or a table for that size)")
        predicted = LatencyPredictor(table).latency(model.spec)
    timing = TimingConfig(**_timing_fields(args, table))
    if timing.cuda_graphs and not runtime.is_eager:
        raise NasError(f"--cuda-graphs: only with --runtime torch, not {runtime.describe()}")
    result = bench(model, device, runtime=runtime, batch=batch, dtype=dtype, threads=threads,
                   timing=timing, fillers=not args.alone)
    if table is not None:
        result.update(lut=str(table.path), predicted_ms=predicted,
                      measured_over_predicted=result["median_ms"] / predicted)
    mem = result["memory"]
    h, w = result["input_size"]
    lines = [
        f"{result['model']} ({result['source']}, {h}x{w}, batch {batch}, {dtype}) on "
        f"{result['device']}, {result['runtime']}, {result['threads']} thread(s)",
        f"  latency  median {result['median_ms']:.3f} ms  (p10 {result['p10_ms']:.3f}, p90 "
        f"{result['p90_ms']:.3f}; {result['rounds']} rounds, clock {result['clock']}, "
        + (f"interleaved with {result['interleaved_with']} random networks)"
           if result["interleaved_with"] else "alone)"),
        f"  memory   peak RSS {mem['peak_rss_mb']:.1f} MB"
        + (f", model + runtime + activations {mem['model_rss_mb']:.1f} MB"
           if mem.get("model_rss_mb") is not None else "")
        + (f", CUDA peak allocated {mem['cuda_peak_allocated_mb']:.1f} MB"
           if "cuda_peak_allocated_mb" in mem else ""),
    ]
    if "macs" in result:
        lines.append(f"  size     {result['params'] / 1e6:.2f} M params, "
                     f"{result['macs'] / 1e6:.1f} M MACs")
    if predicted is not None:
        lines.append(f"  table    {table.path} predicts {predicted:.3f} ms (measured / predicted "
                     f"{result['measured_over_predicted']:.3f})")
    lines.append(f"  machine  {describe(result['fingerprint'])}")
    lines += [f"  note     {n}" for n in result["notes"]]
    return Result("\n".join(lines), result)
