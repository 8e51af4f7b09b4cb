"""ONNX Runtime as a measured runtime: the ONNX exporter, the export cache, sessions and calls.

Every ONNX graph the project makes goes through ``export_onnx`` (``nas export`` writes whole
networks with it, tables export their rows with it): ``torch.onnx.export`` with the
torch.export-based exporter (``dynamo=True``, torch's default), opset ``OPSET``, a dynamic batch
axis, the exporter's graph optimisation on.

Rows. A table row is one op at one input shape. Rows are exported in batches (one wrapper module
holding a chunk's ops, each with its own input and output, exported in one call, then cut into
one model per op with ``onnx.utils.Extractor``): the exporter's cost is mostly per call (about 4 s
for one op, 1 s per op in a batch of 40, measured on the 2-core build machine), and the graph of
each op is the one the exporter writes for it.

Networks. ``PoseNet`` is a chain of the ops its spec names, so a network's graph is the chain of
its rows' graphs (``chain``): the same nodes and initialisers, joined output to input. That makes
a whole network cost nothing to export once its rows are, which calibration, validation, the
speed probe and the search's measured checks need by the dozen. ``network_model(spec, how=
"export")`` exports the ``PoseNet`` in one piece instead (what ``nas export`` writes, 10-25 s per
network here); ``benchmarks/runtime_gap.py`` measures both side by side and reports the ratio.

Cache. Exported graphs are cached on disk (``$NAS_CACHE_DIR``, else ``$XDG_CACHE_HOME/nas``, else
``~/.cache/nas``; under ``onnx/``), keyed by what they are (row key or spec, batch, dtype, opset,
torch version, weight seed), so a second build, a validation or a probe exports nothing again.
Weights are drawn from a seed derived from the key: the same key gives the same file.

Sessions. ``session_options(threads)``: ``intra_op_num_threads = threads``, one inter-op thread,
sequential execution, every graph optimisation (``ORT_ENABLE_ALL``: constant folding, Conv+BN and
Conv+activation fusions, layout transforms). With one intra-op thread ONNX Runtime runs a call on
the calling thread (no thread pool), so the thread-CPU-time clock of ``lut.timing`` applies as it
does to eager rows (checked: thread time equals wall time on an idle core, and stays put while
another process takes the core). On CUDA providers inputs and outputs are bound on the device
(``IOBinding``) and ``run_with_iobinding`` returns after the device is done, so the wall clock
times the device's work.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from supernets.errors import NasError
from supernets.fileio import write_atomic

__all__ = ["CUDA_PROVIDERS", "OPSET", "PROVIDERS", "available_providers", "cache_dir", "chain",
           "check_provider", "export_onnx", "load_onnx_file", "network_model", "op_models",
           "ort_version", "runner", "session", "session_options", "session_settings"]

OPSET = 20
PROVIDERS = ("CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider")
CUDA_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
EXPORT_BATCH_ROWS = 32   # ops exported in one exporter call, at most
_CACHE_FORMAT = 1        # bump when what a cached file holds changes


def ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def available_providers() -> list[str]:
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def check_provider(provider: str, device: torch.device) -> None:
    """NasError unless ``provider`` is one we time with, exists here and suits ``device``."""
    if provider not in PROVIDERS:
        raise NasError(f"--provider {provider}: expected one of {', '.join(PROVIDERS)}")
    here = available_providers()
    if provider not in here:
        raise NasError(f"--provider {provider}: not available in this onnxruntime "
                       f"{ort_version()} (available here: {', '.join(here)})")
    if (provider in CUDA_PROVIDERS) != (device.type == "cuda"):
        want = "a CUDA device (--device cuda)" if provider in CUDA_PROVIDERS else "--device cpu"
        raise NasError(f"--provider {provider} runs on {want}, not on --device {device}")


# -- export --------------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet_exporter():
    """The exporter logs that torchvision is absent (never used here) and raises FutureWarnings
    from its own internals: noise for a user of ``nas export`` or ``nas lut build``."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its own internals' Future/User/Deprecation warnings
            yield
    finally:
        logger.setLevel(level)


def export_onnx(model: nn.Module, args: tuple, input_names: Sequence[str],
                output_names: Sequence[str]):
    """``torch.onnx.export`` as the project uses it (see the module docstring): ``args`` the
    forward's arguments (tensors, or tuples of them), every tensor's first axis the dynamic
    batch axis. Returns the ``ONNXProgram`` (``.model_proto`` the graph, ``.save`` writes it)."""
    from torch.utils import _pytree

    batch = torch.export.Dim("batch")
    dynamic = _pytree.tree_map(lambda _: {0: batch}, args)
    with _quiet_exporter(), torch.no_grad():
        return torch.onnx.export(
            model.eval(), args, dynamo=True, verbose=False, opset_version=OPSET,
            input_names=list(input_names), output_names=list(output_names),
            dynamic_shapes=dynamic)


class _Ops(nn.Module):
    """Several ops side by side, one output each (for one exporter call): an op's input is a
    tensor, or a tuple of them (a segmentation head's feature and low-level feature)."""

    def __init__(self, ops: Sequence[nn.Module]):
        super().__init__()
        self.ops = nn.ModuleList(ops)

    def forward(self, xs: tuple):
        return tuple(op(*x) if isinstance(x, tuple) else op(x) for op, x in zip(self.ops, xs))


def cache_dir() -> Path:
    root = os.environ.get("NAS_CACHE_DIR")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = str(Path(base) / "nas")
    return Path(root) / "onnx"


def _cache_key(kind: str, what: str, batch: int, dtype: str) -> str:
    ident = {"format": _CACHE_FORMAT, "kind": kind, "what": what, "batch": batch,
             "dtype": dtype, "opset": OPSET, "torch": torch.__version__}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


def _seed(key: str) -> int:
    return int(key[:8], 16)


def _cached(key: str):
    import onnx

    path = cache_dir() / f"{key}.onnx"
    if not path.exists():
        return None
    try:
        return onnx.load_model_from_string(path.read_bytes())
    except Exception:  # a corrupt cache entry (a full disk once): export it again
        path.unlink(missing_ok=True)
        return None


def _store(key: str, model) -> None:
    with contextlib.suppress(OSError):  # an unwritable cache costs time, never a result
        write_atomic(cache_dir() / f"{key}.onnx", model.SerializeToString())


def _dtype(dtype: str) -> torch.dtype:
    if dtype != "fp32":
        raise NasError(f"--dtype {dtype}: ONNX Runtime tables are measured in fp32 only")
    return torch.float32


def op_models(rows: Sequence, batch: int = 1, dtype: str = "fp32",
              on_export: Callable[[int], None] | None = None) -> dict:
    """``{row.key: onnx.ModelProto}`` of each row's op alone (input ``x``, output ``y``), from
    the cache or exported in batches of ``EXPORT_BATCH_ROWS``; ``on_export(n)`` after each
    batch of n exported rows."""
    from onnx.utils import Extractor

    _dtype(dtype)
    models, todo = {}, []
    for row in rows:
        key = _cache_key("op", row.key, batch, dtype)
        model = _cached(key)
        if model is None:
            todo.append((row, key))
        else:
            models[row.key] = model
    for start in range(0, len(todo), EXPORT_BATCH_ROWS):
        part = todo[start:start + EXPORT_BATCH_ROWS]
        ops, xs, inputs = [], [], []
        for i, (row, key) in enumerate(part):
            with torch.random.fork_rng():
                torch.manual_seed(_seed(key))
                ops.append(row.build().eval())
            x = tuple(torch.zeros_like(t) for t in row.inputs(batch))
            xs.append(x if row.low_chs else x[0])   # a segmentation head: inputs x and low
            inputs.append([f"x{i}", f"low{i}"][:len(x)])
        program = export_onnx(_Ops(ops), (tuple(xs),), [n for names in inputs for n in names],
                              [f"y{i}" for i in range(len(part))])
        kept = {v.name for v in program.model_proto.graph.input}   # an unused input is dropped
        extractor = Extractor(program.model_proto)
        for i, ((row, key), names) in enumerate(zip(part, inputs)):
            names = [n for n in names if n in kept]
            rename = {f"x{i}": "x", f"low{i}": "low", f"y{i}": "y"}
            model = _renamed(extractor.extract_model(names, [f"y{i}"]), rename)
            _store(key, model)
            models[row.key] = model
        if on_export:
            on_export(len(part))
    return {row.key: models[row.key] for row in rows}


def _renamed(model, names: dict[str, str]):
    """``model`` with the graph inputs/outputs in ``names`` renamed (everywhere they occur)."""
    graph = model.graph
    for node in graph.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
    for value in (*graph.input, *graph.output):
        value.name = names.get(value.name, value.name)
    return model


def chain(models: Sequence, input_name: str = "image", output_name: str = "heatmaps",
          taps: Mapping[int, int] | None = None):
    """One model running ``models`` one after the other: their nodes and initialisers, names
    prefixed ``l<i>/``, each input ``x`` joined to the previous output. ``taps``: ``{i: j}``,
    model ``i`` (a segmentation head) also takes model ``j``'s output as its input ``low``."""
    import onnx
    from onnx import compose, helper

    if not models:
        raise ValueError("chain of no models")
    taps = dict(taps or {})
    nodes, inits, infos, opsets = [], [], [], {}
    previous, outputs = input_name, []
    for i, model in enumerate(models):
        m = compose.add_prefix(model, f"l{i}/")
        g = m.graph
        names = [v.name for v in g.input]
        low = [n for n in names if n == f"l{i}/low"]
        if len(names) - len(low) != 1 or len(g.output) != 1 or m.functions:
            raise ValueError(f"model {i}: expected one input (and a low-level one), one output "
                             "and no local functions")
        if low and i not in taps:
            raise ValueError(f"model {i} takes a low-level feature; say which model gives it")
        (x_name,) = [n for n in names if n not in low]
        out = output_name if i == len(models) - 1 else g.output[0].name
        rename = {x_name: previous, g.output[0].name: out}
        if low:
            rename[low[0]] = outputs[taps[i]]
        for node in g.node:
            node.input[:] = [rename.get(n, n) for n in node.input]
            node.output[:] = [rename.get(n, n) for n in node.output]
            nodes.append(node)
        if x_name == g.output[0].name:  # an op that passes its input through
            nodes.append(helper.make_node("Identity", [previous], [out]))
        inits.extend(g.initializer)
        infos.extend(v for v in g.value_info if v.name not in rename)
        for op in m.opset_import:
            opsets[op.domain] = max(opsets.get(op.domain, 0), op.version)
        previous = out
        outputs.append(out)
    first_in, last_out = models[0].graph.input[0], models[-1].graph.output[0]
    graph = helper.make_graph(
        nodes, "network",
        [helper.make_value_info(input_name, first_in.type)],
        [helper.make_value_info(output_name, last_out.type)], inits, value_info=infos)
    merged = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v)
                                                     for d, v in sorted(opsets.items())])
    merged.ir_version = max(m.ir_version for m in models)
    onnx.checker.check_model(merged)
    return merged


def network_model(spec, batch: int = 1, dtype: str = "fp32", *, how: str = "chain"):
    """The ONNX model of ``spec``'s ``PoseNet`` (input ``image``, output ``heatmaps``).

    ``how="chain"``: the chain of its rows' graphs (exported once per row, cached);
    ``how="export"``: the whole network exported in one call, as ``nas export`` does (cached).
    """
    from lut.keys import spec_rows
    from supernets.model import PoseNet

    _dtype(dtype)
    if how == "chain":
        rows = [row for _, row in spec_rows(spec)]
        ops = op_models(rows, batch, dtype)
        layers = spec.layers()
        labels = [layer.label for layer in layers]
        taps = {i: labels.index(layer.low_from) for i, layer in enumerate(layers)
                if layer.low_from is not None}
        return chain([ops[row.key] for row in rows], taps=taps)
    if how != "export":
        raise ValueError(f"how = {how!r}: expected 'chain' or 'export'")
    key = _cache_key("network", _spec_ident(spec), batch, dtype)
    model = _cached(key)
    if model is None:
        with torch.random.fork_rng():
            torch.manual_seed(_seed(key))
            net = PoseNet(spec).eval()
        x = torch.zeros(batch, 3, *spec.skeleton.input_size)
        model = export_onnx(net, (x,), ["image"], ["heatmaps"]).model_proto
        _store(key, model)
    return model


def _spec_ident(spec) -> str:
    """What makes two specs the same network (not their names)."""
    d = spec.to_dict()
    return json.dumps({k: v for k, v in d.items() if k != "name"}, sort_keys=True)


# -- sessions ------------------------------------------------------------------------------------

def session_settings(threads: int) -> dict:
    """The session options every measurement uses, as stored in a table's fingerprint."""
    return {"intra_op_num_threads": threads, "inter_op_num_threads": 1,
            "execution_mode": "ORT_SEQUENTIAL", "graph_optimization_level": "ORT_ENABLE_ALL"}


def session_options(threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only: warnings about unused initialisers are noise
    return so


def session(model, provider: str, threads: int, device_index: int = 0):
    """An ``InferenceSession`` of ``model`` (ModelProto, bytes or a path) on ``provider``."""
    import onnxruntime as ort

    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    elif isinstance(model, (str, os.PathLike)):
        model = str(model)
    options = {"device_id": str(device_index)} if provider in CUDA_PROVIDERS else {}
    return ort.InferenceSession(model, session_options(threads),
                                providers=[(provider, options)])


def runner(sess, x: np.ndarray | Mapping[str, np.ndarray], provider: str,
           device_index: int = 0) -> Callable[[], object]:
    """A zero-argument call running ``sess`` on ``x`` as deployed: host arrays on the CPU
    provider; inputs and outputs bound on the GPU for CUDA providers. ``x``: the array of the
    session's one input, or arrays by input name (those the session does not take are left
    out: an exported op drops an input it does not use)."""
    import onnxruntime as ort

    names = [i.name for i in sess.get_inputs()]
    feeds = {k: v for k, v in x.items() if k in names} if isinstance(x, Mapping) \
        else {names[0]: x}
    if provider not in CUDA_PROVIDERS:
        return lambda: sess.run(None, feeds)
    binding = sess.io_binding()
    on_device = []
    for name, value in feeds.items():
        value_dev = ort.OrtValue.ortvalue_from_numpy(value, "cuda", device_index)
        binding.bind_ortvalue_input(name, value_dev)
        on_device.append(value_dev)
    for out in sess.get_outputs():
        binding.bind_output(out.name, "cuda", device_index)

    def call():
        sess.run_with_iobinding(binding)
        return on_device  # keeps the device inputs alive as long as the call
    return call


def load_onnx_file(path: str | os.PathLike):
    """An .onnx file as a ModelProto; NasError (one line) if it does not load or check."""
    import onnx

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise NasError(f"{path}: cannot read ({e.strerror})") from None
    try:
        model = onnx.load_model_from_string(data)
        onnx.checker.check_model(model)
    except Exception as e:  # protobuf's DecodeError, onnx's ValidationError
        first = " ".join(str(e).split())[:200] or type(e).__name__
        raise NasError(f"{path}: not a valid ONNX model ({first})") from None
    return model

