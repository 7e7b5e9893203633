"""Fixtures shared by the model tests."""

import pytest
import torch


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def cpu_threads(request):
    """GEMM kernels (and so rounding) differ with the thread count: check both."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)
