"""The in-place KV cache (handlers/slot_cache.py) over a real ONNX export of a tiny GPT, bound with
IOBinding: rows of different lengths decode in one batch, prompts prefill in chunks, rows leave and
the tail moves into their slots — and every logit equals the eager model's full recompute. The
torch-tensor buffers a GPU uses are bound the same way on the CPU and must give the same numbers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from deepserve.export.generative_plans import write_gpt_version
from deepserve.handlers.concat_cache import BatchCache
from deepserve.handlers.generation import TextGenerationHandler
from deepserve.handlers.kv_contract import IN_PLACE, KVCache
from deepserve.handlers.slot_arrays import HostArrays, TorchArrays
from deepserve.handlers.slot_cache import BUCKET, SlotCache
from deepserve.models import build_model
from deepserve.store import ModelSpec

CTX = 96
TOL = {"rtol": 1e-4, "atol": 1e-3}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, TextGenerationHandler]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    gpt: Any = build_model("gpt", vocab_size=256, context_length=CTX, n_layer=2, n_head=2, d_model=16).eval()
    with torch.no_grad():
        gpt.wte.weight.mul_(30)  # peaked logits: greedy choices far from ties
    version = tmp_path_factory.mktemp("store") / "tiny-gpt" / "1"
    write_gpt_version(gpt, version, name="tiny-gpt")
    handler = TextGenerationHandler(ModelSpec.read(version), version, threads=1)
    handler.load()
    yield gpt, handler
    torch.set_num_threads(threads)


def full_logits(gpt: Any, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return gpt(torch.tensor([ids]))[0, -1].numpy()


def prompts() -> list[list[int]]:
    return [list(b"a much longer first prompt, forty bytes"), list(b"short"), list(b"middle one")]


def decode_round(
    cache: KVCache, gpt: Any, seqs: list[list[int]], steps: int, tol: dict[str, float] = TOL
) -> None:
    """``steps`` greedy decodes of every row, each row's logits checked against full recompute."""
    for _ in range(steps):
        tokens = np.array([int(full_logits(gpt, s).argmax()) for s in seqs], np.int64)
        logits = cache.decode(tokens)
        for row, token in enumerate(tokens.tolist()):
            seqs[row].append(token)
            np.testing.assert_allclose(logits[row], full_logits(gpt, seqs[row]), **tol)


def fill(
    cache: KVCache, gpt: Any, chunk: int, count: int = 3, tol: dict[str, float] = TOL
) -> list[list[int]]:
    seqs = []
    for prompt in prompts()[:count]:
        pre = cache.begin(len(prompt))
        for start in range(0, len(prompt), chunk):  # chunked prefill: later chunks attend to earlier ones
            logits = cache.prefill(pre, prompt[start : start + chunk])
        np.testing.assert_allclose(logits, full_logits(gpt, prompt), **tol)
        cache.join(pre, 1)
        seqs.append(list(prompt))
    return seqs


@pytest.mark.parametrize("chunk", [64, 7])
def test_rows_of_different_lengths_decode_as_if_alone(exported: Any, chunk: int) -> None:
    gpt, handler = exported
    assert handler.contract == IN_PLACE
    cache = handler.open_cache(4)
    assert isinstance(cache, SlotCache) and cache._session is not None  # ONNX Runtime: bound IO
    seqs = fill(cache, gpt, chunk)
    decode_round(cache, gpt, seqs, 3)
    order = cache.keep([1, 2])  # row 0 leaves: the last row moves into its slot
    assert order == [2, 1] and cache.rows == 2
    seqs = [seqs[i] for i in order]
    decode_round(cache, gpt, seqs, 2)
    pre = cache.begin(3)
    logits = cache.prefill(pre, list(b"new"))
    cache.join(pre, 2)  # n=2: one prompt, two rows
    seqs += [list(b"new"), list(b"new")]
    np.testing.assert_allclose(logits, full_logits(gpt, list(b"new")), **TOL)
    decode_round(cache, gpt, seqs, 2)


def test_the_cache_grows_in_buckets_and_narrows_when_long_rows_leave(exported: Any) -> None:
    gpt, handler = exported
    cache = handler.open_cache(2)
    assert isinstance(cache, SlotCache)
    seqs = fill(cache, gpt, 64, count=2)
    assert cache.width == BUCKET * 2  # the 39-byte prompt + 1 fits in two buckets
    buffer = cache.keys[0]
    decode_round(cache, gpt, seqs, 3)
    assert cache.keys[0] is buffer  # decoding inside a bucket writes into the same buffers
    assert cache.lengths[:2].tolist() == [len(s) for s in seqs]
    cache.keep([1])  # the long row leaves: the attention narrows to the short row's bucket
    assert cache.width == BUCKET
    decode_round(cache, gpt, [seqs[1]], 2)
    assert cache.nbytes == 2 * 2 * (2 * 2 * BUCKET * 8) * 4  # K+V x layers x (slots, H, W, Dh) float32


def test_torch_buffers_bind_like_host_arrays(exported: Any) -> None:
    """The GPU path's buffers (torch tensors bound by pointer), run on the CPU: same logits."""
    gpt, handler = exported
    host = handler.open_cache(4)
    device = handler.open_cache(4)
    assert isinstance(host, SlotCache) and isinstance(device, SlotCache)
    assert isinstance(host.arrays, HostArrays)
    device.arrays = TorchArrays("cpu", np.float32)
    for cache in (host, device):
        decode_round(cache, gpt, fill(cache, gpt, 5), 2)
    assert isinstance(device.keys[0], torch.Tensor)
    np.testing.assert_allclose(device.keys[1].numpy(), host.keys[1], rtol=1e-5, atol=1e-6)


def test_the_concat_cache_gives_the_same_logits(exported: Any) -> None:
    """The cache for graphs with a ``present`` output (imported Hugging Face LMs) behaves the same."""
    gpt, handler = exported
    cache = BatchCache(handler.step, (2, 2, 8))
    seqs = fill(cache, gpt, 7)
    decode_round(cache, gpt, seqs, 2)
    assert cache.keep([1, 2]) == [1, 2]
    decode_round(cache, gpt, seqs[1:], 2)


def test_a_full_cache_refuses_another_row(exported: Any) -> None:
    _, handler = exported
    cache = handler.open_cache(1)
    pre = cache.begin(2)
    cache.prefill(pre, [1, 2])
    cache.join(pre, 1)
    with pytest.raises(RuntimeError, match="1 slots"):
        cache.join(pre, 1)


@pytest.mark.gpu
def test_the_cache_lives_on_the_gpu_and_gives_the_cpu_logits(exported: Any) -> None:
    """On a GPU (bench/gpu_check.sh runs `-m gpu`): slot buffers are CUDA tensors bound by pointer."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers() or not torch.cuda.is_available():
        pytest.skip("needs onnxruntime-gpu with the CUDA provider and a CUDA build of torch")
    gpt, cpu_handler = exported
    gpu_handler = TextGenerationHandler(
        cpu_handler.spec, cpu_handler.version_dir, device="cuda:0", precision="fp32"
    )
    gpu_handler.load()
    cache = gpu_handler.open_cache(4)
    assert isinstance(cache, SlotCache) and cache.arrays.on_device
    loose = {"rtol": 1e-3, "atol": 2e-2}  # the GPU may run fp32 matmuls in TF32
    decode_round(cache, gpt, fill(cache, gpt, 5, tol=loose), 3, tol=loose)
    assert cache.keys[0].is_cuda
