"""Plain-PyTorch definitions of every gls op: the oracle that all kernels are tested against."""
