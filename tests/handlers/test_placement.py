"""Where a served model was placed, end to end through the registry: its load line says the device,
and a model pinned to a GPU the node lacks fails its load in one line while the others serve."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from deepserve.service import devices
from deepserve.service.metrics import Metrics
from deepserve.service.registry import Registry
from deepserve.service.settings import Settings


async def test_the_load_line_names_the_device(image_cls: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(model_store=image_cls.parent.parent, load_models=["img-cls"], device="cpu")
    registry = Registry(settings, Metrics(CollectorRegistry()))
    with caplog.at_level(logging.INFO, logger="deepserve.service.registry"):
        await registry.load_store()
    try:
        assert registry.get("img-cls").ready
        assert any(
            r.getMessage().startswith("model img-cls version 1 ready in ")
            and r.getMessage().endswith(" s on cpu")
            for r in caplog.records
        ), caplog.text
    finally:
        await registry.stop(timeout=1.0)


async def test_a_model_pinned_to_a_missing_gpu_fails_its_load_in_one_line(
    image_cls: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEEPSERVE_MODELS", '{"img-cls": {"device": "cuda:2"}}')
    monkeypatch.setattr(devices, "visible_gpus", lambda: 2)
    settings = Settings(model_store=image_cls.parent.parent, load_models=["img-cls"], device="cpu")
    registry = Registry(settings, Metrics(CollectorRegistry()))
    await registry.load_store()
    try:
        entry = registry.find("img-cls")
        assert entry.state == "failed"
        assert entry.reason == (
            "ModelLoadError: model img-cls: device cuda:2 is not on this machine, which has "
            "2 visible GPU(s), cuda:0..cuda:1"
        )
    finally:
        await registry.stop(timeout=1.0)
