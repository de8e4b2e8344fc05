"""Page-locked host buffers for the host->device copies an IOBinding still makes.

A CUDA copy from ordinary (pageable) host memory goes through the driver's own small pinned
staging area, chunk by chunk; from page-locked memory it is one DMA at the bus's full rate. So
``PinnedStaging`` keeps one page-locked buffer per input name, copies each feed into it (a host
memcpy) and hands back a numpy view that ``OrtValue.ortvalue_from_numpy(view, "cuda", id)`` copies
from. The CUDA driver recognises the pointer as pinned (unified addressing), and such a copy returns
only when it is done, so the buffer is free again for the next call.

A buffer grows to the next power of two when a feed outgrows it and is kept otherwise: the
batcher's batch sizes vary call to call, and pinning memory is slow (a driver call and page
locking), so a steady load allocates a few times at its first batches and then never.

Where the memory comes from is injected (``allocate``: bytes -> a uint8 numpy array). The server's
is torch's pinned allocator (``torch_pinned_allocator``), used when torch is installed with CUDA;
onnxruntime's Python API cannot allocate on its 'cuda_pinned' memory (its OrtValue takes cpu, cuda
and a few others, not pinned host memory). Without torch+CUDA there is no staging and ORT copies
from the feeds as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

Allocator = Callable[[int], np.ndarray]

# Kinds a CUDA tensor can hold (bool, ints, floats, complex); strings and objects are never staged.
_NUMERIC_KINDS = frozenset("biufc")


def grown_size(need: int) -> int:
    """The next power of two at or above ``need`` bytes (at least 1)."""
    return 1 << max(0, need - 1).bit_length()


class PinnedStaging:
    """One reused page-locked buffer per input name; ``stage`` returns the feed's copy in it.

    The view ``stage`` returns is overwritten by the next ``stage`` of the same name: copy from it
    (``ortvalue_from_numpy``) before staging that name again. ``lock`` is held by the caller
    around a whole call's stage-and-copy, so two threads never share a buffer mid-copy.
    """

    def __init__(self, allocate: Allocator) -> None:
        self._allocate = allocate
        self._buffers: dict[str, np.ndarray] = {}
        self.allocations = 0  # how many buffers were pinned so far: reuse shows as no growth
        self.lock = threading.Lock()

    def stage(self, name: str, array: np.ndarray) -> np.ndarray:
        if array.dtype.kind not in _NUMERIC_KINDS:
            return array
        buffer = self._buffers.get(name)
        if buffer is None or buffer.nbytes < array.nbytes:
            buffer = self._allocate(grown_size(array.nbytes))
            if buffer.dtype != np.uint8 or buffer.nbytes < array.nbytes:
                raise ValueError(
                    f"pinned allocator gave {buffer.dtype}[{buffer.nbytes}], not uint8[>={array.nbytes}]"
                )
            self._buffers[name] = buffer
            self.allocations += 1
        view = buffer[: array.nbytes].view(array.dtype).reshape(array.shape)
        np.copyto(view, array)
        return view

    def capacity(self, name: str) -> int:
        """Bytes held for ``name`` (0: none yet)."""
        buffer = self._buffers.get(name)
        return 0 if buffer is None else int(buffer.nbytes)


def torch_pinned_allocator(device_id: int) -> Allocator | None:
    """torch's page-locked allocator for GPU ``device_id``; None without torch or without CUDA.

    Imported here, when a CUDA binding is made, never on a CPU server. The allocation runs under
    ``torch.cuda.device(device_id)``: pinning needs a CUDA context, and this way it is the one ORT
    already made on the model's GPU (the driver's primary context) instead of a new one on cuda:0.
    """
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None

    def allocate(nbytes: int) -> np.ndarray:
        with torch.cuda.device(device_id):
            pinned: Any = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        host: np.ndarray = pinned.numpy()  # shares the pinned memory; the array keeps the tensor alive
        return host

    return allocate
