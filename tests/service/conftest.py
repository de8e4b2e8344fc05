from __future__ import annotations

import pytest

from tests.service.fakes import SumHandler


@pytest.fixture
def sum_handler() -> SumHandler:
    return SumHandler()
