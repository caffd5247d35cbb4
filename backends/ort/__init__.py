"""The ONNX / ONNX Runtime training backend (imports onnx and onnxruntime: never at `import swat_fx` time)."""
