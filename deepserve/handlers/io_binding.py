"""Device-resident I/O for ONNX Runtime: one host->device copy per input, one device->host per output.

``session.run`` with numpy feeds on a CUDA or TensorRT session lets ORT stage every input and
output through its own temporaries, and each output it hands back is a fresh host copy made after
a synchronising device copy. With an IOBinding the inputs become device OrtValues in one copy each,
the outputs are allocated on the device by ORT (their shapes are only known after the run), and
``copy_outputs_to_cpu`` brings them back in one copy each. ``run`` stays dict-in, list-out in the
session's output order, so OrtRuntime keeps its dict-in dict-out contract.

On CUDA the host->device copies go through reused page-locked buffers (deepserve.handlers.pinned)
when torch with CUDA is installed, one DMA each instead of the driver's chunked pageable copy.

On the CPU provider a binding only adds work (there is no copy to save), so ``binding_device``
returns None there and OrtRuntime keeps ``session.run``. ORT also accepts a 'cpu' binding, which
is how the binding logic (names, dtypes, shapes, device) is tested on a machine without a GPU.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from deepserve.handlers.pinned import PinnedStaging, torch_pinned_allocator

# Providers whose memory is CUDA device memory: TensorRT allocates through the CUDA allocator.
_CUDA_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def binding_device(provider: str) -> str | None:
    """The ORT device type to bind on for the provider a session really runs on; None: plain run."""
    return "cuda" if provider in _CUDA_PROVIDERS else None


@dataclass(frozen=True)
class BoundInput:
    """What one input is bound as: checked in tests, and in the error of a feed that cannot bind."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    device_type: str
    device_id: int


def plan_inputs(feeds: dict[str, np.ndarray], device_type: str, device_id: int) -> list[BoundInput]:
    return [BoundInput(name, a.dtype, tuple(a.shape), device_type, device_id) for name, a in feeds.items()]


class DeviceBinding:
    """Runs one session through an IOBinding on ``device_type:device_id``.

    A fresh binding per call: the batcher's batch size varies call to call, and a binding reused
    across shapes would keep the previous call's output buffers alive on the device. The host
    buffers the inputs are staged through are reused (``staging``; default: torch's pinned memory
    on CUDA, none elsewhere or without torch).
    """

    def __init__(
        self,
        session: Any,
        output_names: list[str],
        *,
        device_type: str,
        device_id: int,
        staging: PinnedStaging | None = None,
    ) -> None:
        self.session, self.output_names = session, output_names
        self.device_type, self.device_id = device_type, device_id
        self.staging = staging if staging is not None else default_staging(device_type, device_id)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        binding = self.session.io_binding()
        self._bind_inputs(binding, feeds)
        for name in self.output_names:
            binding.bind_output(name, self.device_type, self.device_id)
        self.session.run_with_iobinding(binding)
        outputs: list[np.ndarray] = binding.copy_outputs_to_cpu()
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        return outputs

    def _bind_inputs(self, binding: Any, feeds: dict[str, np.ndarray]) -> None:
        import onnxruntime as ort

        staging = self.staging
        # the copy out of a staged buffer is done when ortvalue_from_numpy returns: hold the lock that long
        with staging.lock if staging is not None else contextlib.nullcontext():
            for bound in plan_inputs(feeds, self.device_type, self.device_id):
                host = feeds[bound.name] if staging is None else staging.stage(bound.name, feeds[bound.name])
                value = ort.OrtValue.ortvalue_from_numpy(host, bound.device_type, bound.device_id)
                binding.bind_ortvalue_input(bound.name, value)


def default_staging(device_type: str, device_id: int) -> PinnedStaging | None:
    """Pinned staging for a CUDA binding when torch can pin memory; None otherwise (plain copies)."""
    if device_type != "cuda":
        return None
    allocate = torch_pinned_allocator(device_id)
    return PinnedStaging(allocate) if allocate is not None else None
