"""The garbage collector tuned for serving (service.heap): what settle and tune do to the heap, and
that the registry settles it after every load and unload."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from deepserve.service import heap
from deepserve.service.dataplane import DataPlane
from deepserve.service.settings import Settings
from tests.service.test_registry import _write_store, fake_loader  # noqa: F401 (a fixture)


@pytest.fixture
def gc_restored() -> Iterator[None]:
    """The test process's collector as it was: these tests change process-wide state."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


class _Cycle:
    def __init__(self) -> None:
        self.me = self  # only the cyclic collector frees it


def test_tune_raises_only_the_young_threshold(gc_restored: None) -> None:
    gc.set_threshold(700, 10, 10)
    heap.tune()
    assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, 10, 10)


def test_settle_freezes_what_survives_and_frees_what_an_unload_left(gc_restored: None) -> None:
    kept, dropped = _Cycle(), _Cycle()
    gone = weakref.ref(dropped)
    heap.settle("a test load")
    assert gc.get_freeze_count() > 0
    del dropped  # an unloaded model's cycle: frozen, so only settle's unfreeze + collect frees it
    gc.collect()
    assert gone() is not None
    heap.settle("unloading it")
    assert gone() is None
    assert kept.me is kept


async def test_the_registry_settles_after_start_up_load_and_unload(
    tmp_path: Path,
    fake_loader: list[Path],  # noqa: F811
) -> None:
    settings = Settings(model_store=_write_store(tmp_path), enable_management=True, management_token="t")
    plane = DataPlane(settings)
    changes: list[str] = []
    plane.registry.after_change = changes.append
    async with plane:
        await plane.loaded()
        await plane.registry.unload("other")
        await plane.registry.load("other")
    assert changes == ["the start-up load", "unloading other", "loading other"]


def test_the_setting_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPSERVE_GC_TUNING", "false")
    assert Settings().gc_tuning is False
    assert Settings.model_fields["gc_tuning"].default is True
