"""Which GPU each model runs on: ``DEEPSERVE_DEVICES`` and per-model ``device`` placement.

``DEEPSERVE_DEVICES="cuda:0,cuda:1"`` (or ``"0,1"``) lists the GPUs this server may use; a model
whose ``DEEPSERVE_MODELS`` entry names a ``device`` runs there, the others are dealt out
round-robin in the order they first load. A model keeps its device across reloads (a new version
lands where the old one ran, so the GPU's memory budget planned by the operator holds). With no
list every model runs on ``DEEPSERVE_DEVICE`` as before. GPU metrics are per device already
(the ``gpu`` label of the NVML gauges in deepserve.service.metrics).

A device the machine does not have (``cuda:3`` on a two-GPU node, any ``cuda:N`` where no GPU is
visible) fails that model's load with one line saying what the machine has, instead of leaving
ONNX Runtime to fall back to the CPU. The count is CUDA's view: ``CUDA_VISIBLE_DEVICES`` when set
(CUDA numbers only those), else NVML's; where neither can tell, nothing is checked.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable

from deepserve.handlers.base import ModelLoadError

_DEVICE = re.compile(r"^(?:cuda:)?(\d+)$")


def parse_device(text: str) -> str:
    """``"1"`` or ``"cuda:1"`` -> ``"cuda:1"``; anything else is a one-line ValueError."""
    found = _DEVICE.match(text.strip())
    if found is None:
        raise ValueError(f"bad device {text!r}: write cuda:N or N (a GPU index), e.g. cuda:0")
    return f"cuda:{int(found.group(1))}"


def parse_devices(text: str) -> list[str]:
    """A comma-separated list of GPUs, each once; empty text: no list."""
    if not text.strip():
        return []
    devices = [parse_device(item) for item in text.split(",")]
    if len(set(devices)) != len(devices):
        raise ValueError(f"DEEPSERVE_DEVICES={text!r} names a GPU twice")
    return devices


def visible_gpus() -> int | None:
    """How many GPUs CUDA numbers in this process, or None when it cannot be told cheaply."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:  # CUDA stops at the first entry that is not a device
        count = 0
        for item in listed.split(","):
            if not item.strip() or item.strip().startswith("-"):
                break
            count += 1
        return count
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no NVML library or no driver: a CPU box, or one that cannot say
        return None


def check_device(model: str, device: str, visible: int | None) -> None:
    """Refuse a ``cuda:N`` the machine does not have (``visible`` GPUs; None: not checked)."""
    found = _DEVICE.match(device.removeprefix("cuda:")) if device.startswith("cuda:") else None
    if found is None or visible is None or int(found.group(1)) < visible:
        return
    has = "no visible GPU" if visible == 0 else f"{visible} visible GPU(s), cuda:0..cuda:{visible - 1}"
    raise ModelLoadError(f"model {model}: device {device} is not on this machine, which has {has}")


class DevicePlacer:
    """Hands out devices: the pinned one, else round-robin over ``devices``, else ``fallback``;
    each ``cuda:N`` checked against the count of ``visible`` GPUs."""

    def __init__(
        self, devices: list[str], fallback: str, visible: Callable[[], int | None] | None = None
    ) -> None:
        self.devices, self.fallback = devices, fallback
        self._visible = functools.cache(visible or visible_gpus)  # asked once, when a cuda:N is placed
        self._placed: dict[str, str] = {}
        self._dealt = 0  # models placed round-robin so far; pinned ones do not take a turn

    def place(self, name: str, pinned: str | None = None) -> str:
        if pinned is not None:
            self._placed[name] = pinned
        elif name not in self._placed:
            if self.devices:
                self._placed[name] = self.devices[self._dealt % len(self.devices)]
                self._dealt += 1
            else:
                self._placed[name] = self.fallback
        if self._placed[name].startswith("cuda:"):
            check_device(name, self._placed[name], self._visible())
        return self._placed[name]
