"""The in-place KV cache: preallocated per-slot buffers that the step graph reads and never copies.

For the in-place contract (``kv_contract.py``). Every layer has a key and a value buffer
``(S, H, W, Dh)``: S slots (the engine's most running sequences), W columns. Decode row i lives in
slot i, its token at position p in column p, so the running rows are always slots ``0..B-1`` and
``buffer[:B]`` is a contiguous view that goes into the graph as it is. The graph returns only the
new columns; they are written into column ``length_i`` of each row, with no concatenation.

Copies happen only where they cannot be avoided: a prefilled prompt joins (its columns into the
free slot), a sequence leaves (the last row moves into its slot: one slot, not the whole cache),
and the width grows past a bucket (every ``BUCKET`` tokens; the graph attends over W columns,
masked, so W stays within a bucket of the longest row).

Inputs and outputs go through ONNX Runtime's IOBinding: on CUDA the buffers are device memory
(torch tensors, bound by pointer) and only the token ids and the logits cross to the host; on
CPU they are host arrays, bound the same way. Any other runtime gets the same views as feeds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from deepserve.handlers.kv_contract import past_names
from deepserve.handlers.runtime import Runtime, is_cuda
from deepserve.handlers.slot_arrays import Arrays, arrays_for, empty_view, rows_view, width

log = logging.getLogger(__name__)
BUCKET = 32  # the width grows (and shrinks) in steps of this many columns


@dataclass(eq=False)
class SlotPrefill:
    """One prompt being prefilled, in its own one-slot buffers until it joins the decode rows."""

    keys: list[Any]  # per layer (1, H, Wp, Dh)
    values: list[Any]
    length: int = 0  # prompt tokens already in the buffers


class SlotCache:
    """Slot buffers plus the step that runs over them (see the module docstring)."""

    def __init__(
        self,
        runtime: Runtime,
        geometry: tuple[int, int, int],
        *,
        capacity: int,
        context_length: int,
        vocab_size: int,
        device: str = "cpu",
    ) -> None:
        self.layers, self.heads, self.head_dim = geometry
        self.vocab_size = vocab_size
        self.capacity, self.context_length = capacity, context_length
        self._runtime = runtime
        session = getattr(runtime, "session", None)  # an ONNX Runtime session: bound IO
        self._session = session if session is not None and hasattr(session, "io_binding") else None
        outputs = {} if self._session is None else {o.name: o for o in self._session.get_outputs()}
        self._logits_dtype = (
            np.float16 if "float16" in getattr(outputs.get("logits"), "type", "") else np.float32
        )
        self.arrays: Arrays = arrays_for(
            device if self._session is not None else "cpu", _cache_dtype(self._session)
        )
        self._names = past_names(self.layers)
        self.width = 0
        self.keys: list[Any] = []
        self.values: list[Any] = []
        self.lengths = np.zeros(capacity, np.int64)
        self.rows = 0
        if is_cuda(device) and not self.arrays.on_device:
            log.warning("KV cache of %s stays in host memory (torch has no CUDA here): every step copies it "
                        "to the GPU", getattr(runtime, "path", "the model"))  # fmt: skip

    @property
    def nbytes(self) -> int:
        return sum(self.arrays.nbytes(b) for b in (*self.keys, *self.values))

    # -- prefill ---------------------------------------------------------------------------------
    def begin(self, prompt_length: int) -> SlotPrefill:
        width = _bucketed(prompt_length, self.context_length)
        shape = (1, self.heads, width, self.head_dim)
        return SlotPrefill([self.arrays.zeros(shape) for _ in range(self.layers)],
                           [self.arrays.zeros(shape) for _ in range(self.layers)])  # fmt: skip

    def prefill(self, pre: SlotPrefill, tokens: list[int]) -> np.ndarray:
        """Run the next ``tokens`` of ``pre``'s prompt; the logits of its last position (V,)."""
        start, t = pre.length, len(tokens)
        past_width = width(pre.keys[0]) if start else 0  # the first chunk has no past
        mask = np.zeros((1, past_width + t), np.int64)
        mask[0, :start], mask[0, past_width:] = 1, 1
        ids = np.array([tokens], np.int64)
        positions = np.arange(start, start + t, dtype=np.int64)[None]
        past = [b if start else empty_view(b) for b in (*pre.keys, *pre.values)]
        logits, new_key, new_value = self._run(ids, positions, mask, past)
        for layer in range(self.layers):
            pre.keys[layer][0, :, start : start + t] = new_key[layer, 0]
            pre.values[layer][0, :, start : start + t] = new_value[layer, 0]
        pre.length += t
        last: np.ndarray = logits[0, -1]  # (V,) the next-token logits after the chunk
        return last

    def join(self, pre: SlotPrefill, copies: int) -> None:
        """``pre``'s prompt becomes ``copies`` decode rows after the current ones."""
        if self.rows + copies > self.capacity:
            raise RuntimeError(f"KV cache has {self.capacity} slots; {self.rows} used, {copies} more asked")
        n = pre.length
        self._ensure_width(n + 1)
        first = self.rows
        for layer in range(self.layers):
            for slot in range(first, first + copies):
                self.keys[layer][slot, :, :n] = pre.keys[layer][0, :, :n]
                self.values[layer][slot, :, :n] = pre.values[layer][0, :, :n]
        self.lengths[first : first + copies] = n
        self.rows += copies

    # -- decode ----------------------------------------------------------------------------------
    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """One new token per running row (B,); the next-token logits (B, V)."""
        rows = self.rows
        lengths = self.lengths[:rows]
        self._ensure_width(int(lengths.max()) + 1)
        columns = self.width
        mask = np.ones((rows, columns + 1), np.int64)  # the last column: the new token itself
        mask[:, :columns] = np.arange(columns)[None, :] < lengths[:, None]
        past = [rows_view(b, rows) for b in (*self.keys, *self.values)]
        ids = np.ascontiguousarray(tokens.reshape(rows, 1), np.int64)
        logits, new_key, new_value = self._run(ids, lengths[:, None].copy(), mask, past)
        index = np.arange(rows)
        for layer in range(self.layers):
            self.arrays.scatter(self.keys[layer], index, lengths, new_key[layer, :, :, 0])
            self.arrays.scatter(self.values[layer], index, lengths, new_value[layer, :, :, 0])
        self.lengths[:rows] += 1
        return logits[:, -1]

    def keep(self, alive: list[int]) -> list[int]:
        """Keep the rows ``alive`` (old indices); the tail rows move into the holes. Returns the old
        index of each new row, in row order."""
        n = len(alive)
        kept = set(alive)
        holes = [i for i in range(n) if i not in kept]
        movers = sorted(i for i in alive if i >= n)
        order = list(range(n))
        for hole, mover in zip(holes, movers, strict=True):
            for buffers in (self.keys, self.values):
                for buffer in buffers:
                    buffer[hole] = buffer[mover]
            self.lengths[hole] = self.lengths[mover]
            order[hole] = mover
        self.rows = n
        longest = int(self.lengths[:n].max()) + 1 if n else 0
        if _bucketed(longest, self.context_length) < self.width:  # a long row left: narrow the attention
            self._resize(_bucketed(longest, self.context_length))
        return order

    # -- internals -------------------------------------------------------------------------------
    def _ensure_width(self, columns: int) -> None:
        if columns > self.width:
            self._resize(_bucketed(columns, self.context_length))

    def _resize(self, width: int) -> None:
        """New buffers ``width`` columns wide holding the running rows' columns."""
        shape = (self.capacity, self.heads, width, self.head_dim)
        keep = min(width, self.width)
        for buffers in (self.keys, self.values):
            if len(buffers) < self.layers:
                buffers[:] = [self.arrays.zeros(shape) for _ in range(self.layers)]
                continue
            for layer, old in enumerate(buffers):
                new = self.arrays.zeros(shape)
                new[: self.rows, :, :keep] = old[: self.rows, :, :keep]
                buffers[layer] = new
        self.width = width

    def _run(
        self, ids: np.ndarray, positions: np.ndarray, mask: np.ndarray, past: list[Any]
    ) -> tuple[np.ndarray, Any, Any]:
        """One step. ONNX Runtime: IOBinding, token inputs and logits on the host, cache views and
        new columns where the cache is. Any other runtime: the views as feeds."""
        feeds = {"input_ids": ids, "position_ids": positions, "attention_mask": mask}
        session, arrays = self._session, self.arrays
        if session is None:
            out = self._runtime.run(
                feeds | dict(zip(self._names, [arrays.to_host(p) for p in past], strict=True))
            )
            return out["logits"], out["new_key"], out["new_value"]
        binding = session.io_binding()
        for name, host in feeds.items():
            binding.bind_cpu_input(name, host)
        for name, view in zip(self._names, past, strict=True):
            arrays.bind_input(binding, name, view)
        rows, new_tokens = ids.shape
        logits = np.empty((rows, new_tokens, self.vocab_size), self._logits_dtype)
        binding.bind_output("logits", "cpu", 0, logits.dtype, logits.shape, logits.ctypes.data)
        new_shape = (self.layers, rows, self.heads, new_tokens, self.head_dim)
        new_key, new_value = arrays.empty(new_shape), arrays.empty(new_shape)
        arrays.bind_output(binding, "new_key", new_key)
        arrays.bind_output(binding, "new_value", new_value)
        arrays.synchronize()
        session.run_with_iobinding(binding)
        return logits.astype(np.float32, copy=False), new_key, new_value


def _bucketed(columns: int, context_length: int) -> int:
    """``columns`` rounded up to the bucket, at most the context window (never below ``columns``)."""
    return max(columns, min(-(-columns // BUCKET) * BUCKET, context_length))


def _cache_dtype(session: Any) -> Any:
    """The graph's cache dtype: float16 for a native-fp16 ONNX file, else float32."""
    if session is None:
        return np.float32
    past = next((i for i in session.get_inputs() if i.name == "past_key_0"), None)
    return np.float16 if past is not None and "float16" in past.type else np.float32
