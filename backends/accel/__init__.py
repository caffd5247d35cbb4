"""The sparse-accelerator backend: an IR of the whole training step and a cost model."""
