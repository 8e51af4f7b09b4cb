"""NNI interop: any of our search spaces as an NNI ``ModelSpace``, NNI architectures as specs.

Needs the optional extra (NNI 3.0, the last release; see the README's "NNI interop"); without it
``model_space`` raises a one-line ``NasError`` naming the install command. ``to_spec`` and
``from_spec`` need no NNI: an NNI architecture is a plain ``{label: candidate name}`` dict.

    space = get_space("cpu-small")
    net = model_space(space)           # one LayerChoice per choice layer, labelled as our specs
    ...                                # any NNI strategy; it exports {label: name}
    spec = to_spec(space, exported)    # nas.arch/1, checked against the space
    from_spec(spec) == exported

Candidates are built by ``supernets.ops.build_op``, the factory of our supernet and standalone
models, at the shapes those models give them, so an architecture NNI picks is exactly one of our
specs (``tests/test_interop_nni.py`` checks the outputs equal ``PoseNet``'s on the same weights).

Choice-dependent input widths. A head stage's input width is the previous stage's width choice,
and NNI's mixed layers (DARTS, GumbelDARTS, Proxyless) add or compare their candidates' outputs,
so every candidate of a layer must return one shape. As in ``supernets.supernet``, a layer that
feeds such a choice returns its output per width: ``[slot w1 | ... | slot wk | mass w1 ... wk]``,
one channel block per output width (the candidate's own width filled, the others zero) plus one
constant channel per width holding its weight (1 for the candidate's own width). A mixed layer's
weighted sum then holds, per width, the weighted sum of those outputs and their total weight;
the next layer runs its module for input width ``w`` on ``slot_w / mass_w`` and weights the
result by ``mass_w``, skipping widths of weight zero (the widths no sampled path reaches). With
one path per layer (a fixed architecture, a sampled path) each layer runs exactly one module on
exactly the input the standalone network gives it (x / 1 and x * 1 are exact), which is how the
same network comes out. The cost: a frozen NNI network keeps the modules of a head layer for
input widths its architecture does not use (never run); ``PoseNet(to_spec(space, arch))`` is the
compact standalone network.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from supernets.errors import NasError
from supernets.ops import build_op
from supernets.space import Candidate, SearchSpace, SpaceLayer
from supernets.spec import ArchSpec

__all__ = ["INSTALL", "from_spec", "model_space", "nni_version", "to_spec"]

INSTALL = "pip install -e '.[nni]' && pip install --no-deps nni==3.0"
CHOICE_KINDS = ("backbone", "head", "seghead")


def _import_nni():
    """NNI's PyTorch NAS classes, or a NasError naming the extra."""
    try:
        with warnings.catch_warnings():
            # NNI 3.0 warns about every torch.nn class it does not know (newer torch)
            warnings.simplefilter("ignore", RuntimeWarning)
            import nni
            from nni.nas.nn.pytorch import LayerChoice, ModelSpace
    except ImportError as e:
        raise NasError(f"NNI interop needs the extra ({e}): {INSTALL}") from None
    return nni, LayerChoice, ModelSpace


def nni_version() -> str:
    nni, _, _ = _import_nni()
    return nni.__version__


class WidthCandidate(nn.Module):
    """One candidate of one layer: ``build_op`` modules, one per input width the layer can see,
    reading and writing the per-width layout of the module docstring where widths vary."""

    def __init__(self, layer: SpaceLayer, candidate: Candidate, out_widths: tuple[int, ...]):
        super().__init__()
        self.in_widths = tuple(w for w in layer.in_widths
                               if not (candidate.op == "skip" and w != candidate.out_chs))
        self.layer_in_widths = layer.in_widths
        self.out_width = candidate.out_chs
        self.out_widths = out_widths
        self.takes_low = layer.low_from is not None
        self.ops = nn.ModuleDict({
            f"in{w}": build_op(candidate.op, w, candidate.out_chs, layer.stride,
                               low_chs=layer.low_chs or None)
            for w in self.in_widths})

    def op(self, in_width: int) -> nn.Module:
        return self.ops[f"in{in_width}"]

    def _run(self, op: nn.Module, x: Tensor, low: Tensor | None) -> Tensor:
        return op(x, low) if self.takes_low else op(x)

    def forward(self, x: Tensor, low: Tensor | None = None) -> Tensor:
        if len(self.layer_in_widths) == 1:
            y, mass = self._run(self.op(self.layer_in_widths[0]), x, low), None
        else:
            y, mass = self._from_widths(x, low)
        if len(self.out_widths) == 1:
            return y if mass is None else y / mass
        return self._to_widths(y, mass)

    def _from_widths(self, x: Tensor, low: Tensor | None) -> tuple[Tensor, Tensor]:
        widths = self.layer_in_widths
        slots = torch.split(x, [*widths, len(widths)], dim=1)
        y = mass = None
        for i, w in enumerate(widths):
            m = slots[-1][:, i:i + 1, :1, :1]
            if w not in self.in_widths or not bool(torch.any(m)):
                continue  # no path reaches this input width (or this candidate cannot take it)
            y_w = self._run(self.op(w), slots[i] / m, low) * m
            y = y_w if y is None else y + y_w
            mass = m if mass is None else mass + m
        if y is None:
            raise NasError(f"no input width of {self.layer_in_widths} reaches this layer")
        return y, mass

    def _to_widths(self, y: Tensor, mass: Tensor | None) -> Tensor:
        n, _, h, w = y.shape
        mass_map = (y.new_ones(n, 1, h, w) if mass is None
                    else mass.expand(n, 1, h, w))
        blocks = [y if width == self.out_width else y.new_zeros(n, width, h, w)
                  for width in self.out_widths]
        masses = [mass_map if width == self.out_width else y.new_zeros(n, 1, h, w)
                  for width in self.out_widths]
        return torch.cat(blocks + masses, dim=1)


@functools.cache
def _space_class():
    _, LayerChoice, ModelSpace = _import_nni()

    class NniSpace(ModelSpace):
        """Our search space as an NNI model space: a flat sequence of layers as in ``PoseNet``,
        a ``LayerChoice`` (labelled as our specs) at every choice layer."""

        def __init__(self, space: SearchSpace):
            super().__init__()
            self.space_name = space.name
            layers = space.layers()
            self.labels = [layer.label for layer in layers]
            modules = []
            for i, layer in enumerate(layers):
                out_widths = (layers[i + 1].in_widths if i + 1 < len(layers)
                              else (layer.candidates[0].out_chs,))
                candidates = {c.name: WidthCandidate(layer, c, out_widths)
                              for c in layer.candidates}
                if layer.kind in CHOICE_KINDS:
                    modules.append(LayerChoice(candidates, label=layer.label))
                else:
                    (module,) = candidates.values()
                    modules.append(module)
            self.layers = nn.ModuleList(modules)
            self.taps = [(self.labels.index(layer.low_from), i) for i, layer in enumerate(layers)
                         if layer.low_from is not None]

        def forward(self, x: Tensor) -> Tensor:
            uses = {use: keep for keep, use in self.taps}
            keeps = set(uses.values())
            kept: dict[int, Tensor] = {}
            for i, layer in enumerate(self.layers):
                x = layer(x, kept[uses[i]]) if i in uses else layer(x)
                if i in keeps:
                    kept[i] = x
            return x

    return NniSpace


def model_space(space: SearchSpace):
    """``space`` as an instance of an NNI ``ModelSpace`` subclass (NNI needed)."""
    return _space_class()(space)


def to_spec(space: SearchSpace, nni_arch: Mapping, name: str | None = None) -> ArchSpec:
    """An NNI-exported architecture (``{label: candidate name}``) as a ``nas.arch/1`` spec of
    ``space``; every key and value checked, the first bad one named."""
    if not isinstance(nni_arch, Mapping):
        raise NasError(f"NNI architecture: expected a dict of label -> candidate name, "
                       f"got {type(nni_arch).__name__}")
    layers = {layer.label: layer for layer in space.layers() if layer.kind in CHOICE_KINDS}
    for label, value in nni_arch.items():
        if label not in layers:
            raise NasError(f"NNI architecture: unknown label {label!r} for space {space.name} "
                           f"(labels {next(iter(layers))} ... {next(reversed(layers))})")
        if not isinstance(value, str) or value not in layers[label].names:
            raise NasError(f"NNI architecture: [{label!r}] = {value!r} is not a candidate of "
                           f"space {space.name}; expected one of "
                           f"{', '.join(layers[label].names)}")
    missing = [label for label, layer in layers.items()
               if layer.searchable and label not in nni_arch]
    if missing:
        raise NasError(f"NNI architecture: no choice for label {missing[0]!r} "
                       f"({len(missing)} of {len(layers)} missing)")
    return space.spec(dict(nni_arch), name or f"{space.name}-nni")


def from_spec(spec: ArchSpec) -> dict[str, str]:
    """A spec as NNI exports an architecture: ``{label: candidate name}``, every choice layer."""
    return {label: spec.choices[label] for label in spec.skeleton.choice_labels()}
