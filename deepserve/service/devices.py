"""Which GPU each model runs on: ``DEEPSERVE_DEVICES`` and per-model ``device`` placement.

``DEEPSERVE_DEVICES="cuda:0,cuda:1"`` (or ``"0,1"``) lists the GPUs this server may use; a model
whose ``DEEPSERVE_MODELS`` entry names a ``device`` runs there, the others are dealt out
round-robin in the order they first load. A model keeps its device across reloads (a new version
lands where the old one ran, so the GPU's memory budget planned by the operator holds). With no
list every model runs on ``DEEPSERVE_DEVICE`` as before. GPU metrics are per device already
(the ``gpu`` label of the NVML gauges in deepserve.service.metrics).

A device the machine does not have (``cuda:3`` on a two-GPU node, any ``cuda:N`` where no GPU is
visible) fails that model's load with one line saying what the machine has, instead of leaving
ONNX Runtime to fall back to the CPU. ``DEEPSERVE_DEVICES`` is checked once more at start
(``startup_problem``), so a list naming a GPU the node lacks stops the server before any load.

The count is CUDA's view, from the cheapest source that is honest about it (no torch import, and
onnxruntime has no count API): ``CUDA_VISIBLE_DEVICES`` when set (CUDA numbers only those), else
NVML's (the ``gpu`` extra installs it), else 0 on a Linux box with no NVIDIA driver at all (no
``/dev/nvidia*``, no ``/proc/driver/nvidia``: CUDA cannot run there). Where none of them can
tell (a driver but no NVML, not Linux), nothing is checked.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

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
    counted = _nvml_count()
    if counted is not None:
        return counted
    return 0 if driverless() else None


def _nvml_count() -> int | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no nvidia-ml-py, or no NVML library / driver: the device nodes may tell
        return None


def driverless(dev: Path = Path("/dev"), proc: Path = Path("/proc/driver/nvidia")) -> bool:
    """True on a Linux box with no NVIDIA driver at all: no ``nvidia*`` node under ``dev`` and no
    ``proc`` entry. Only that answer is trusted: where the driver is loaded, per-GPU nodes can be
    made lazily (nvidia-modprobe at the first CUDA call), so counting them could refuse a real GPU."""
    if not sys.platform.startswith("linux") or not dev.is_dir():
        return False
    try:
        return not proc.exists() and not any(node.name.startswith("nvidia") for node in dev.iterdir())
    except OSError:  # an unreadable /dev: cannot tell
        return False


def check_device(model: str, device: str, visible: int | None) -> None:
    """Refuse a ``cuda:N`` the machine does not have (``visible`` GPUs; None: not checked)."""
    problem = missing_device(device, visible)
    if problem is not None:
        raise ModelLoadError(f"model {model}: {problem}")


def missing_device(device: str, visible: int | None) -> str | None:
    """``device cuda:3 is not on this machine, which has ...`` when it is not there, else None."""
    found = _DEVICE.match(device.removeprefix("cuda:")) if device.startswith("cuda:") else None
    if found is None or visible is None or int(found.group(1)) < visible:
        return None
    has = "no visible GPU" if visible == 0 else f"{visible} visible GPU(s), cuda:0..cuda:{visible - 1}"
    return f"device {device} is not on this machine, which has {has}"


def startup_problem(devices: str, visible: Callable[[], int | None] | None = None) -> str | None:
    """One line for ``DEEPSERVE_DEVICES`` naming a GPU the node lacks, else None (the count is only
    asked for when the list is not empty: a CPU server never looks)."""
    listed = parse_devices(devices)
    if not listed:
        return None
    count = (visible or visible_gpus)()
    for device in listed:
        problem = missing_device(device, count)
        if problem is not None:
            return f"DEEPSERVE_DEVICES: {problem} (got {devices!r})"
    return None


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
