import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    # tiny models: extra intra-op threads only add contention (and on a busy machine, a lot of it)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
