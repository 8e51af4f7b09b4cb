"""End-to-end latency and peak memory of one model on this machine: what ``nas bench`` runs.

The model is an arch (JSON file or a named one: fresh weights), a ``nas.model/1`` checkpoint
(its weights) or an .onnx file, run in PyTorch eager or ONNX Runtime. It is timed with the tables'
method (``lut.timing``: warm-up, interleaved rounds, median with p10/p90) among random filler
networks of its skeleton, as ``nas lut validate`` times its networks, so the two agree; an .onnx
file without the arch in its metadata (``nas.arch``, written by ``nas export``) is timed alone.
In ONNX Runtime an arch or checkpoint runs as ``nas export`` writes it (one-piece export, the
fillers as chains of their rows' graphs: ``lut.ort``).

Peak memory is measured apart from the timing, with the model alone: on CPU the resident set's
high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs`` just before the model is
built) minus the resident set before, i.e. what the model's weights, buffers, runtime session and
activations added at their peak; on a GPU with PyTorch, ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lut.device import available_cores, default_threads, parse_device, parse_dtype
from lut.device import runtime as settings_for
from lut.fingerprint import fingerprint
from lut.runtimes import Runtime
from lut.timing import TimingConfig, measure
from supernets.errors import NasError
from supernets.spec import ArchSpec

__all__ = ["BenchModel", "bench", "load_bench_model"]

FILLERS = 16  # as lut.build.measure_network, so that bench and validation time alike


@dataclass
class BenchModel:
    """What ``nas bench`` runs: ``spec`` when known, weights or an ONNX graph when given."""

    name: str
    source: str                        # "named", "arch", "checkpoint" or "onnx"
    spec: ArchSpec | None
    input_size: tuple[int, int]
    torch_model: torch.nn.Module | None = None
    onnx_model: object | None = None   # onnx.ModelProto (an .onnx file)
    notes: list[str] = field(default_factory=list)


def load_bench_model(ref: str, *, input_size: tuple[int, int] | None = None,
                     batch: int = 1) -> BenchModel:
    """Read MODEL as ``nas bench`` names it; NasError (one line) for anything unreadable."""
    from supernets.named import NAMED_ARCHS, load_arch

    path = Path(ref)
    if path.suffix == ".onnx":
        return _load_onnx(path, input_size, batch)
    if path.suffix in (".pt", ".pth", ".ckpt"):
        from nas.checkpoint import load_model_checkpoint

        spec, model, _ = load_model_checkpoint(path)
        if input_size:
            spec, model, _ = load_model_checkpoint(path, arch=spec.with_input(input_size))
        return BenchModel(spec.name, "checkpoint", spec, spec.skeleton.input_size, model)
    spec = load_arch(ref, input_size=input_size)
    return BenchModel(spec.name, "named" if ref in NAMED_ARCHS else "arch", spec,
                      spec.skeleton.input_size)


def _load_onnx(path: Path, input_size: tuple[int, int] | None, batch: int) -> BenchModel:
    from lut import ort
    from nas.export import ARCH_METADATA

    model = ort.load_onnx_file(path)
    inputs = [i for i in model.graph.input
              if i.name not in {init.name for init in model.graph.initializer}]
    if len(inputs) != 1:
        raise NasError(f"{path}: the model has {len(inputs)} inputs; expected one image input "
                       "(N, 3, H, W)")
    dims = inputs[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if len(shape) != 4 or shape[1] not in (None, 3):
        raise NasError(f"{path}: input {inputs[0].name!r} has shape "
                       f"{['?' if s is None else s for s in shape]}; expected (N, 3, H, W)")
    if shape[0] is not None and shape[0] != batch:
        raise NasError(f"{path}: input {inputs[0].name!r} has a fixed batch of {shape[0]}; run "
                       f"it with --batch {shape[0]}")
    fixed = tuple(shape[2:]) if None not in shape[2:] else None
    if input_size and fixed and tuple(input_size) != fixed:
        raise NasError(f"{path}: the model takes {fixed[0]}x{fixed[1]} images, not --input "
                       f"{input_size[0]}x{input_size[1]}")
    size = input_size or fixed
    if size is None:
        raise NasError(f"{path}: input {inputs[0].name!r} has no fixed height and width; give "
                       "them with --input HxW")
    spec, notes = None, []
    meta = {p.key: p.value for p in model.metadata_props}
    if ARCH_METADATA in meta:
        try:
            spec = ArchSpec.from_json(meta[ARCH_METADATA])
        except (NasError, ValueError, KeyError, TypeError) as e:
            notes.append(f"its {ARCH_METADATA} metadata is not a valid arch ({e}): timed alone")
        else:
            if spec.skeleton.input_size != tuple(size):
                spec = spec.with_input(tuple(size))
    else:
        notes.append(f"no {ARCH_METADATA} metadata (not written by nas export): timed alone, "
                     "without filler networks")
    return BenchModel(spec.name if spec else path.stem, "onnx", spec, tuple(size),
                      onnx_model=model, notes=notes)


# -- memory ------------------------------------------------------------------------------------

def _status_kb(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_memory(make_call, runs: int, device: torch.device) -> dict:
    """Build the model's call with ``make_call()``, run it ``runs`` times: memory it added."""
    before = _status_kb("VmRSS")
    reset = _reset_peak()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base_alloc = torch.cuda.memory_allocated(device)
    call = make_call()
    for _ in range(runs):
        call()
    out = {"method": "VmHWM after clear_refs" if reset and before is not None
           else "ru_maxrss (whole process)"}
    if reset and before is not None and _status_kb("VmHWM") is not None:
        peak = _status_kb("VmHWM")
        out.update(peak_rss_mb=peak / 1024, model_rss_mb=max(0, peak - before) / 1024)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out.update(peak_rss_mb=peak / 1024, model_rss_mb=None)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        out["cuda_peak_allocated_mb"] = (torch.cuda.max_memory_allocated(device)
                                         - base_alloc) / 2**20
    del call
    return out


# -- timing ------------------------------------------------------------------------------------

def _target_graph(m: BenchModel, runtime: Runtime, batch: int):
    """The ONNX graph ONNX Runtime runs (None for eager): made before anything is measured, so
    that neither the exporter's time nor its memory is counted."""
    if runtime.is_eager:
        if m.onnx_model is not None:
            raise NasError(f"{m.name}: an .onnx file runs in ONNX Runtime, not with --runtime "
                           "torch")
        return None
    from lut import ort

    if m.onnx_model is not None:
        return m.onnx_model
    if m.torch_model is not None:  # a checkpoint: its trained weights, as nas export writes
        x = torch.zeros(1, 3, *m.input_size)
        return ort.export_onnx(m.torch_model.cpu().eval(), (x,), ["image"],
                               ["heatmaps"]).model_proto
    return ort.network_model(m.spec, batch, "fp32", how="export")


def _target_call(m: BenchModel, graph, runtime: Runtime, dev: torch.device, dt: torch.dtype,
                 batch: int, threads: int, gen: torch.Generator):
    """A zero-argument call running the model as the user would deploy it."""
    if runtime.is_eager:
        from supernets.model import PoseNet

        model = m.torch_model if m.torch_model is not None else PoseNet(m.spec)
        model = model.eval().to(dev, dt)
        x = torch.randn(batch, 3, *m.input_size, generator=gen).to(dev, dt)
        return lambda: model(x)
    return runtime.model_call(graph, m.input_size, dev, batch, gen, threads)


def bench(m: BenchModel, device: str = "cpu", *, runtime: Runtime = Runtime(), batch: int = 1,
          dtype: str = "fp32", threads: int | None = None, timing: TimingConfig | None = None,
          fillers: bool = True, memory_runs: int = 10) -> dict:
    """Median, p10 and p90 latency of ``m``, its peak memory and this machine's fingerprint."""
    dev, dt = parse_device(device), parse_dtype(dtype)
    runtime.check_dtype(dtype)
    if batch < 1:
        raise NasError(f"--batch {batch}: expected a positive integer")
    threads = threads or default_threads(dev)
    if threads > available_cores():
        raise NasError(f"--threads {threads}: this process may use {available_cores()} cores")
    timing = timing or TimingConfig()
    clock = runtime.clock(timing.clock, dev, threads)
    gen = torch.Generator().manual_seed(timing.seed)
    use_fillers = fillers and m.spec is not None
    graph = _target_graph(m, runtime, batch)
    with settings_for(dev, threads) as settings:
        memory = _peak_memory(
            lambda: _target_call(m, graph, runtime, dev, dt, batch, threads, gen), memory_runs,
            dev)
        calls = {"model": _target_call(m, graph, runtime, dev, dt, batch, threads, gen)}
        if use_fillers:
            from lut.build import _fillers

            specs = _fillers(m.spec, FILLERS)
            made = runtime.network_calls(specs, dev, dt, batch, gen, threads)
            calls.update({f"filler{i}": c for i, c in enumerate(made)})
        t = measure(calls, dev, timing, clock=clock)["model"]
    result = {
        "model": m.name, "source": m.source, "input_size": list(m.input_size), "batch": batch,
        "dtype": dtype, "device": str(dev), "threads": threads, "clock": clock,
        "runtime": runtime.describe(), "runtime_name": runtime.name,
        "provider": runtime.provider, **t.to_dict(),
        "fps": 1e3 * batch / t.median_ms, "rounds": timing.rounds,
        "interleaved_with": FILLERS if use_fillers else 0, "memory": memory,
        "settings": settings, "fingerprint": fingerprint(dev, threads, runtime),
        "notes": list(m.notes),
    }
    if m.spec is not None:
        from supernets.flops import complexity

        c = complexity(m.spec, batch)
        result.update(params=c.params, macs=c.macs)
    return result
