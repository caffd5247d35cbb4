"""swat_fx: Sparse Weight Activation Training (Raihan & Aamodt, NeurIPS 2020) as a torch.fx transform.

    import swat_fx
    model = swat_fx.transform(model, sparsity=0.7)   # then train it as usual
"""

from swat_fx.backends.eager.formats import Kernel
from swat_fx.config import ALGORITHMS, GRANULARITIES, SITES, SwatConfig
from swat_fx.contract import DenseReason, config_of, is_transformed, swat_graph
from swat_fx.introspect import LayerInfo, format_layers, layers
from swat_fx.monitor import Monitor, monitor  # eager: a lazy name equal to its module's is shadowed by it
from swat_fx.passes import PassContractError
from swat_fx.schedule import accumulate
from swat_fx.state import dense_state_dict
from swat_fx.trace import SwatTraceError, Tracer
from swat_fx.transform import AlreadyTransformedError, transform

__all__ = [
    "ALGORITHMS",
    "GRANULARITIES",
    "SITES",
    "AlreadyTransformedError",
    "DenseReason",
    "Kernel",
    "LayerInfo",
    "Monitor",
    "PassContractError",
    "SwatConfig",
    "SwatTraceError",
    "Tracer",
    "accumulate",
    "config_of",
    "dense_state_dict",
    "format_layers",
    "is_transformed",
    "layers",
    "monitor",
    "swat_graph",
    "transform",
]
__version__ = "0.1.0"

# Backends with optional or heavy dependencies load on first use, so `import swat_fx` stays light and
# never imports ONNX or ONNX Runtime: name -> module that defines it.
_LAZY = {
    "export_onnx": "swat_fx.export",
    "export_ort_training": "swat_fx.export",
    "load_onnx": "swat_fx.export",
    "load_ort_training": "swat_fx.export",
    "ArtifactError": "swat_fx.export",
    "UnsupportedOpError": "swat_fx.export",
    "to_accel_ir": "swat_fx.accel",
    "save_ir": "swat_fx.accel",
    "estimate_cost": "swat_fx.accel",
    "Accelerator": "swat_fx.accel",
    "CostReport": "swat_fx.accel",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'swat_fx' has no attribute {name!r}")
