"""The handlers on the real default models (quick-trained), when tests/conftest.py provides them."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepserve.handlers import load_handler
from deepserve.handlers.base import PayloadRequest, Request
from deepserve.store import ModelSpec
from tests.handlers.test_classification import answer


@pytest.fixture(scope="module")
def real_store(request: pytest.FixtureRequest) -> Path:
    try:
        store: Path = request.getfixturevalue("quick_store")
    except pytest.FixtureLookupError:
        pytest.skip("the quick_store fixture (tests/conftest.py) is not in this checkout")
    return store


def _versions(store: Path) -> list[Path]:
    dirs = [d / "1" for d in sorted(store.iterdir()) if (d / "1" / "model.json").is_file()]
    return [d for d in dirs if ModelSpec.read(d).task != "text-generation"]


def _request(spec: ModelSpec) -> Request:
    pre = spec.preprocessing
    assert pre is not None, f"{spec.name}: model.json has no preprocessing"
    if pre.kind == "image":
        pixels = (np.random.default_rng(0).random((pre.height, pre.width, 3)) * 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")  # RGB: the handler converts channels
        return PayloadRequest(buffer.getvalue())
    if pre.kind == "tabular":
        return PayloadRequest([dict(zip(pre.features, pre.mean, strict=True))] * 2)
    if pre.kind == "text":
        return PayloadRequest(["how do I open a file?", "list comprehensions"])
    return PayloadRequest({"n": 2, "seed": 3})


def test_every_usable_variant_of_every_model_gives_the_same_answer(real_store: Path) -> None:
    versions = _versions(real_store)
    assert versions, f"no servable models in {real_store}"
    for vdir in versions:
        spec = ModelSpec.read(vdir)
        request = _request(spec)
        want = answer(load_handler(vdir, threads=1), request)
        for v in spec.variants:
            if not v.usable or v.precision != "fp32":
                continue
            got = answer(load_handler(vdir, runtime=v.format, precision=v.precision, threads=1), request)
            assert type(got) is type(want), (spec.name, v.file)
            if isinstance(want, list):
                for g, w in zip(got, want, strict=True):
                    values = (list(g.values()), list(w.values())) if isinstance(w, dict) else (g, w)
                    np.testing.assert_allclose(*values, rtol=1e-4, atol=1e-5, err_msg=f"{spec.name} {v.file}")
