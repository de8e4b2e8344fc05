"""Where the slot cache's buffers live: host numpy arrays, or torch tensors on a GPU.

Both kinds index alike (``buffer[:rows]``, ``buffer[rows, :, cols] = new``), so ``SlotCache``
is written once; what differs is allocation and how a buffer is bound to ONNX Runtime (by
pointer, with its device). Torch is used on the GPU because ONNX Runtime's own device values
cannot be written in part: the new columns must land inside the buffer without a host trip.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from deepserve.handlers.runtime import is_cuda


class Arrays(Protocol):
    on_device: bool

    def zeros(self, shape: tuple[int, ...]) -> Any: ...
    def empty(self, shape: tuple[int, ...]) -> Any: ...
    def nbytes(self, buffer: Any) -> int: ...
    def scatter(self, buffer: Any, rows: np.ndarray, columns: np.ndarray, new: Any) -> None: ...
    def to_host(self, buffer: Any) -> np.ndarray: ...
    def bind_input(self, binding: Any, name: str, buffer: Any) -> None: ...
    def bind_output(self, binding: Any, name: str, buffer: Any) -> None: ...
    def synchronize(self) -> None: ...


def width(buffer: Any) -> int:
    return int(buffer.shape[2])


def rows_view(buffer: Any, rows: int) -> Any:
    """The first ``rows`` slots: contiguous, because slots are the outermost axis."""
    return buffer[:rows]


def empty_view(buffer: Any) -> Any:
    """A zero-column past (the first chunk of a prompt attends to nothing cached)."""
    return buffer[:, :, :0]


class HostArrays:
    """numpy buffers in host memory (CPU execution)."""

    on_device = False

    def __init__(self, dtype: Any) -> None:
        self.dtype = np.dtype(dtype)

    def zeros(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.zeros(shape, self.dtype)

    def empty(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.empty(shape, self.dtype)

    def nbytes(self, buffer: np.ndarray) -> int:
        return int(buffer.nbytes)

    def scatter(self, buffer: np.ndarray, rows: np.ndarray, columns: np.ndarray, new: Any) -> None:
        buffer[rows, :, columns] = new  # row i's new (H, Dh) column into column columns[i]

    def to_host(self, buffer: np.ndarray) -> np.ndarray:
        return buffer

    def bind_input(self, binding: Any, name: str, buffer: np.ndarray) -> None:
        binding.bind_input(name, "cpu", 0, buffer.dtype, buffer.shape, buffer.ctypes.data)

    def bind_output(self, binding: Any, name: str, buffer: np.ndarray) -> None:
        binding.bind_output(name, "cpu", 0, buffer.dtype, buffer.shape, buffer.ctypes.data)

    def synchronize(self) -> None:
        return None


class TorchArrays:
    """torch tensors on one device (a GPU in service; the CPU in tests, which binds them the same way)."""

    def __init__(self, device: str, dtype: Any) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.on_device = self.device.type == "cuda"
        self.np_dtype = np.dtype(dtype)
        self.dtype = {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32}[self.np_dtype]
        self._ort_device = ("cuda", self.device.index or 0) if self.on_device else ("cpu", 0)

    def zeros(self, shape: tuple[int, ...]) -> Any:
        return self.torch.zeros(shape, dtype=self.dtype, device=self.device)

    def empty(self, shape: tuple[int, ...]) -> Any:
        return self.torch.empty(shape, dtype=self.dtype, device=self.device)

    def nbytes(self, buffer: Any) -> int:
        return int(buffer.numel() * buffer.element_size())

    def scatter(self, buffer: Any, rows: np.ndarray, columns: np.ndarray, new: Any) -> None:
        torch = self.torch
        index = (torch.from_numpy(rows).to(self.device), torch.from_numpy(columns).to(self.device))
        buffer[index[0], :, index[1]] = new

    def to_host(self, buffer: Any) -> np.ndarray:
        return np.ascontiguousarray(buffer.cpu().numpy())

    def bind_input(self, binding: Any, name: str, buffer: Any) -> None:
        kind, index = self._ort_device
        binding.bind_input(name, kind, index, self.np_dtype, tuple(buffer.shape), buffer.data_ptr())

    def bind_output(self, binding: Any, name: str, buffer: Any) -> None:
        kind, index = self._ort_device
        binding.bind_output(name, kind, index, self.np_dtype, tuple(buffer.shape), buffer.data_ptr())

    def synchronize(self) -> None:
        """torch writes on its stream; ONNX Runtime reads on its own: finish the writes first."""
        if self.on_device:
            self.torch.cuda.current_stream(self.device).synchronize()


def arrays_for(device: str, dtype: Any) -> HostArrays | TorchArrays:
    """Device buffers (torch) on a GPU that torch can reach; host arrays otherwise."""
    if is_cuda(device):
        import torch

        if torch.cuda.is_available():
            return TorchArrays(device, dtype)
    return HostArrays(dtype)
