"""What the HTTP routes take from the app: the data plane they serve."""

from __future__ import annotations

from fastapi import Request

from deepserve.service.dataplane import DataPlane


def plane_of(request: Request) -> DataPlane:
    plane: DataPlane = request.app.state.plane
    return plane
