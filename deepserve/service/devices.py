"""Which GPU each model runs on: ``DEEPSERVE_DEVICES`` and per-model ``device`` placement.

``DEEPSERVE_DEVICES="cuda:0,cuda:1"`` (or ``"0,1"``) lists the GPUs this server may use; a model
whose ``DEEPSERVE_MODELS`` entry names a ``device`` runs there, the others are dealt out
round-robin in the order they first load. A model keeps its device across reloads (a new version
lands where the old one ran, so the GPU's memory budget planned by the operator holds). With no
list every model runs on ``DEEPSERVE_DEVICE`` as before. GPU metrics are per device already
(the ``gpu`` label of the NVML gauges in deepserve.service.metrics).
"""

from __future__ import annotations

import re

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


class DevicePlacer:
    """Hands out devices: the pinned one, else round-robin over ``devices``, else ``fallback``."""

    def __init__(self, devices: list[str], fallback: str) -> None:
        self.devices, self.fallback = devices, fallback
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
        return self._placed[name]
