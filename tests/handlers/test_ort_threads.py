"""A small CPU graph keeps one intra-op thread when that runs it faster; an operator's count stands."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from deepserve.handlers import ort_threads
from deepserve.handlers.ort_threads import fewer_threads_if_faster, probe_feeds
from deepserve.handlers.runtime import open_runtime, select_variant
from deepserve.store import ModelSpec


class FakeSession:
    """Sleeps ``seconds`` per run; inputs as ORT's NodeArg would list them."""

    def __init__(self, seconds: float, inputs: list[Any] | None = None, fails: bool = False) -> None:
        self.seconds, self.fails, self.runs = seconds, fails, 0
        self.inputs = inputs or [SimpleNamespace(name="x", type="tensor(float)", shape=["batch", 4])]

    def get_inputs(self) -> list[Any]:
        return self.inputs

    def run(self, outputs: Any, feeds: dict[str, np.ndarray]) -> None:
        if self.fails:
            raise RuntimeError("past and mask disagree")
        assert feeds["x"].shape == (1, 4)
        self.runs += 1
        time.sleep(self.seconds)


def test_a_small_graph_is_reopened_with_one_thread() -> None:
    single = FakeSession(0.0)
    session, threads, why = fewer_threads_if_faster(FakeSession(0.0), 2, lambda n: single)
    assert (session, threads) == (single, 1)
    assert why is not None and "under 1 ms" in why


def test_a_big_graph_keeps_its_threads_and_is_never_loaded_twice() -> None:
    def refuse(n: int) -> Any:
        raise AssertionError("a graph slower than the threshold must not be built again")

    slow = FakeSession(ort_threads.SMALL_GRAPH_S * 1.5)
    assert fewer_threads_if_faster(slow, 2, refuse) == (slow, 2, None)
    one = FakeSession(0.0)
    assert fewer_threads_if_faster(one, 1, refuse) == (one, 1, None)  # nothing fewer to give


def test_a_graph_whose_probe_fails_keeps_its_threads() -> None:
    odd = FakeSession(0.0, fails=True)
    assert fewer_threads_if_faster(odd, 2, lambda n: FakeSession(0.0)) == (odd, 2, None)


def test_probe_feeds_are_a_batch_of_one_of_each_input() -> None:
    inputs = [SimpleNamespace(name="ids", type="tensor(int64)", shape=[None, 16]),
              SimpleNamespace(name="pixels", type="tensor(float)", shape=["b", 1, 8, 8])]  # fmt: skip
    feeds = probe_feeds(SimpleNamespace(get_inputs=lambda: inputs))
    assert feeds is not None
    assert (feeds["ids"].shape, feeds["ids"].dtype) == ((1, 16), np.int64)
    assert feeds["pixels"].shape == (1, 1, 8, 8)
    tokens = [SimpleNamespace(name="input_ids", type="tensor(int64)", shape=["batch", "sequence"])]
    assert probe_feeds(SimpleNamespace(get_inputs=lambda: tokens)) is None  # one token is no measure
    seq = [SimpleNamespace(name="s", type="seq(tensor(float))", shape=[])]
    assert probe_feeds(SimpleNamespace(get_inputs=lambda: seq)) is None


def test_open_runtime_fits_threads_only_when_the_operator_set_none(
    image_cls: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ort_threads, "median_run_seconds", lambda session, feeds, runs=7: 1e-4)
    monkeypatch.setattr("deepserve.handlers.runtime.default_threads", lambda: 2)
    variant = select_variant(ModelSpec.read(image_cls))
    fitted = open_runtime(image_cls, variant, threads=None)
    assert fitted.threads == 1 and fitted.session.get_session_options().intra_op_num_threads == 1  # type: ignore[attr-defined]
    pixels = np.zeros((2, 1, 8, 8), np.float32)
    name = fitted.input_names[0]
    assert fitted.run({name: pixels})  # the kept session serves
    asked = open_runtime(image_cls, variant, threads=2)
    assert asked.threads == 2  # type: ignore[attr-defined]
