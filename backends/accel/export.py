"""Writing the IR: node-link JSON, GraphML and Graphviz DOT, chosen by the file suffix.

Written here rather than through `networkx.node_link_data`/pydot so that the output is the same on
every networkx >= 3.0 and needs no Graphviz package. GraphML holds scalars only: list and dict
attributes (a node's `reads` and `writes`) are stored as JSON strings.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import networkx as nx

from swat_fx.backends.accel.report import si

EXPORT_FORMATS = {".json": "json", ".graphml": "graphml", ".dot": "dot", ".gv": "dot"}
_PHASE_COLOURS = {"fwd": "#cfe2f3", "bwd_input": "#f4cccc", "bwd_weight": "#fce5cd", "sparsify": "#d9ead3",
                  "update": "#eeeeee"}


def node_link(ir: nx.DiGraph) -> dict[str, Any]:
    """The node-link dict that `networkx.node_link_graph(data, edges="edges")` reads back."""
    return {
        "directed": True,
        "multigraph": False,
        "graph": dict(ir.graph),
        "nodes": [{"id": node, **attrs} for node, attrs in ir.nodes(data=True)],
        "edges": [{"source": u, "target": v, **attrs} for u, v, attrs in ir.edges(data=True)],
    }


def _scalar(value: Any) -> Any:
    if isinstance(value, (str, bool, int, float)):
        return value
    return json.dumps(value)


def _graphml(ir: nx.DiGraph, path: Path) -> None:
    flat = nx.DiGraph(**{k: _scalar(v) for k, v in ir.graph.items()})
    flat.add_nodes_from((n, {k: _scalar(v) for k, v in attrs.items()}) for n, attrs in ir.nodes(data=True))
    flat.add_edges_from((u, v, {k: _scalar(x) for k, x in attrs.items()}) for u, v, attrs in ir.edges(data=True))
    nx.write_graphml(flat, path)


def _quote(text: str) -> str:
    """A DOT string: backslashes and quotes escaped, newlines as DOT's centred line breaks."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(ir: nx.DiGraph) -> str:
    """Graphviz source: one box per node (name, op, phase, effective/dense FLOPs), coloured by phase."""
    lines = ["digraph swat_training_step {", "  rankdir=TB;", '  node [shape=box, style=filled, fontsize=10];']
    for node, attrs in ir.nodes(data=True):
        flops = f"{si(attrs['flops_effective'], 'FLOP')} of {si(attrs['flops_dense'], 'FLOP')}"
        label = f"{node}\n{attrs['op']} ({attrs['phase']})\n{flops}"
        colour = _PHASE_COLOURS.get(attrs["phase"], "white")
        lines.append(f"  {_quote(node)} [label={_quote(label)}, fillcolor={_quote(colour)}];")
    lines += [f"  {_quote(u)} -> {_quote(v)};" for u, v in ir.edges()]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _json_safe(value: Any) -> Any:
    """Non-finite floats (an ideal accelerator's infinite bandwidth) as strings, so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(data: Any, path: str | Path) -> None:
    Path(path).write_text(json.dumps(_json_safe(data), indent=1) + "\n")


def save_ir(ir: nx.DiGraph, path: str | Path) -> Path:
    """Write `ir` to `path`: `.json` (node-link), `.graphml`, or `.dot`/`.gv`."""
    path = Path(path)
    kind = EXPORT_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"cannot tell the IR format from {path.name!r}; use a suffix of: {', '.join(EXPORT_FORMATS)}")
    if kind == "json":
        write_json(node_link(ir), path)
    elif kind == "graphml":
        _graphml(ir, path)
    else:
        path.write_text(to_dot(ir))
    return path
