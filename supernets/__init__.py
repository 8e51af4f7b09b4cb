"""Search spaces, architecture specs, standalone models and supernets."""

from supernets.errors import NasError
from supernets.flops import Complexity, complexity
from supernets.model import PoseNet, build_model
from supernets.named import NAMED_ARCHS, load_arch
from supernets.ops import BACKBONE_OPS, HEAD_OPS, OPS, build_op
from supernets.space import PRESETS, SPACES, Candidate, SearchSpace, SpaceLayer, get_space
from supernets.spec import ArchSpec, Layer, Skeleton, Stage
from supernets.supernet import MixedLayer, SuperNet

__all__ = [
    "BACKBONE_OPS", "HEAD_OPS", "NAMED_ARCHS", "OPS", "PRESETS", "SPACES",
    "ArchSpec", "Candidate", "Complexity", "Layer", "MixedLayer", "NasError", "PoseNet",
    "SearchSpace", "Skeleton", "SpaceLayer", "Stage", "SuperNet",
    "build_model", "build_op", "complexity", "get_space", "load_arch",
]
