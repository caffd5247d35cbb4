"""The ONNX / ONNX Runtime training backend (imports onnx and onnxruntime: never at `import swat_fx` time).

Pipeline, one module per job:

    plan.py        the sparsified ops of a SWAT GraphModule (and what the backend refuses)
    export.py      their dense forward, exported to ONNX with standard ops only
    passes.py      ONNX passes: find each op's forward and gradient nodes, insert W_s, X_s, G_s
    topk_nodes.py  the Top-K mask subgraph of one tensor, per granularity
    batchnorm.py   BatchNorm running statistics carried as checkpoint state
    artifacts.py   ORT's artifact generator and the passes over its output
    checks.py      argument checks, and onnx.checker over every model written
    manifest.py    swat_fx.json: what was exported, each file's SHA-256
    load.py        loaders that fail with a clear error on missing, corrupt or mismatched files
    graph.py, builder.py, errors.py, names.py   helpers

The public API is `swat_fx.export_onnx` and `swat_fx.export_ort_training` (`swat_fx/export.py`).
"""
