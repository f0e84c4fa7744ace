import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module that trains: on a shared 2-core machine torch's two
    OpenMP threads slow small steps 10-100x whenever another process holds a core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
