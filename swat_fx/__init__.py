"""swat_fx: Sparse Weight Activation Training (Raihan & Aamodt, NeurIPS 2020) as a torch.fx transform.

    import swat_fx
    model = swat_fx.transform(model, sparsity=0.7)   # then train it as usual
"""

from swat_fx.config import ALGORITHMS, GRANULARITIES, SITES, SwatConfig
from swat_fx.introspect import LayerInfo, format_layers, layers
from swat_fx.state import dense_state_dict
from swat_fx.trace import SwatTraceError
from swat_fx.transform import transform

__all__ = [
    "ALGORITHMS",
    "GRANULARITIES",
    "SITES",
    "LayerInfo",
    "SwatConfig",
    "SwatTraceError",
    "dense_state_dict",
    "format_layers",
    "layers",
    "transform",
]
__version__ = "0.1.0"
