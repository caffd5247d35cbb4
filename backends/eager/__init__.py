"""The eager PyTorch backend: its lowering of the SWAT graph (`lowering`: kernel choice, storage formats)
and the autograd kernels that implement the table of SPEC §2 (`kernels`)."""
