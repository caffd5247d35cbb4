"""Backends that lower a SWAT graph: `eager` (PyTorch autograd), later `ort` and `accel`."""
