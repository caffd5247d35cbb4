"""The eager PyTorch backend: autograd kernels that implement the table of SPEC §2."""

from swat_fx.backends.eager.kernels import CONV_KERNELS, LINEAR_KERNELS, conv, linear

__all__ = ["CONV_KERNELS", "LINEAR_KERNELS", "conv", "linear"]
