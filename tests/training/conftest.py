import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread() -> None:
    # The CI box has 2 shared cores; tiny models train faster on one thread than on two contended ones.
    torch.set_num_threads(1)
