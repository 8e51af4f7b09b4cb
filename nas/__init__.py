"""nas: hardware-aware differentiable architecture search for dense-prediction heads."""

__version__ = "0.1.0"
