"""Fixtures of the reliability suite: the store, one shared server, the soak scale, the report table.

Sizes are CI-sized by default (the folder runs in about a minute on 2 cores, plus the session's
quick store build when it is not cached); ``DEEPSERVE_SOAK=1`` runs the issue's full size: 30 s
overload bursts per model, 100 fuzz examples per operation and mode.
Store: ``DEEPSERVE_RELIABILITY_STORE=<dir>`` if set (e.g. the real ``model_store``), else the
session's ``quick_store``, else a tiny store made here (tests/reliability/store.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Server, start_server, stop_server
from tests.reliability.store import EMBED, GPT, IMAGE, TABULAR, build_tiny_store

SOAK = os.environ.get("DEEPSERVE_SOAK") == "1"
BURST_S = 30.0 if SOAK else 3.0  # overload burst per model
REPORT = pytest.StashKey[list[dict[str, Any]]]()

# The shared server: a small queue so overload sheds load quickly, a 1 MiB body limit for 413 tests.
SERVER_ENV = {
    "DEEPSERVE_LOAD_MODELS": json.dumps([TABULAR, IMAGE, GPT, EMBED]),  # the rest only lengthens start-up
    "DEEPSERVE_MAX_QUEUE_SIZE": "16",
    "DEEPSERVE_MAX_BODY_BYTES": str(1024 * 1024),
    "DEEPSERVE_MAX_WAITING_SEQUENCES": "8",
}


@pytest.fixture(scope="session")
def rel_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    named = os.environ.get("DEEPSERVE_RELIABILITY_STORE")
    if named:
        return Path(named)
    try:
        store: Path = request.getfixturevalue("quick_store")
        return store
    except pytest.FixtureLookupError:
        return build_tiny_store(tmp_path_factory.mktemp("reliability-store"))


@pytest.fixture(scope="session")
def server(rel_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(rel_store, tmp_path_factory.mktemp("rel-log") / "server.log", **SERVER_ENV)
    yield running
    code = stop_server(running)
    assert code == 0, f"server exited {code} on SIGTERM:\n{running.log.read_text()[-3000:]}"


@pytest.fixture
def report(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    """Rows of the reliability table, printed at the end of the run."""
    return request.config.stash.setdefault(REPORT, [])


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    rows = config.stash.get(REPORT, [])
    if not rows:
        return
    terminalreporter.section("deepserve reliability")
    for row in rows:
        terminalreporter.write_line("  " + "  ".join(f"{k}={v}" for k, v in row.items()))
