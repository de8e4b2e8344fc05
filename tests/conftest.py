"""Session-wide fixtures shared by several test packages.

``server``: ONE ``python -m deepserve.service`` per session on free loopback ports, serving ``e2e_store``
(= ``quick_store``); the e2e, deploy and bench tests all use it.

``quick_store``: a model store built once per test session with ``build_store(quick=True)`` (tiny
recipe sizes; the slow fp16 TorchScript and bf16 torch.export files are not built, and parity.json
lists them under ``not_built``). It is built into the pytest cache and copied into a per-session
temp dir, so a second session with unchanged code reuses the cached build (stamps) and tests may
modify their copy freely. Treat it as read-only anyway: it is shared by the whole session.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Server, start_server, stop_server


@pytest.fixture(scope="session")
def quick_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from deepserve.export.store import build_store

    cache = getattr(request.config, "cache", None)
    build_dir = (
        cache.mkdir("deepserve-quick-store") if cache is not None else tmp_path_factory.mktemp("qs-build")
    )
    build_store(build_dir, quick=True, progress=False)
    store = tmp_path_factory.mktemp("quick-store") / "model_store"
    shutil.copytree(build_dir, store, ignore=shutil.ignore_patterns(".checkpoints"))
    return store


@pytest.fixture(scope="session")
def e2e_store(quick_store: Path) -> Path:
    """The store the shared server serves: the quick-trained default models."""
    return quick_store


@pytest.fixture(scope="session")
def server(e2e_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(e2e_store, tmp_path_factory.mktemp("e2e-log") / "server.log")
    yield running
    code = stop_server(running)
    assert code == 0, f"server exited {code} on SIGTERM:\n{running.log.read_text()[-3000:]}"
