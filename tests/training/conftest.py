from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread() -> None:
    # The CI box has 2 shared cores; tiny models train faster on one thread than on two contended ones.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_bert_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT folder (tests/training/tiny_bert.py) standing in for MiniLM."""
    from tests.training.tiny_bert import tiny_bert

    return tiny_bert(tmp_path_factory.mktemp("tiny-bert"))
