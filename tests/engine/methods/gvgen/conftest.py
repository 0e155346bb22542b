import pytest
import torch


@pytest.fixture
def one_thread():
    """Small tensors: one intra-op thread (two spin-wait against each other on a loaded 2-core machine,
    10-20x slower here). Test modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
