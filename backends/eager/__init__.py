"""The eager PyTorch backend: autograd kernels that implement the table of SPEC §2."""

from swat_fx.backends.eager.kernels import conv, linear, max_pool2d, relu

__all__ = ["conv", "linear", "max_pool2d", "relu"]
