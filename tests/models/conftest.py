from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """The zoo's tiny models gain nothing from intra-op threads, and on a busy 2-core machine
    thread spinning made them 30x slower. Restored afterwards for other packages' tests."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
