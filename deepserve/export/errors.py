"""Typed export errors: each message says what went wrong and what to do next."""

from __future__ import annotations


class ExportError(RuntimeError):
    """Base of everything the export step raises on purpose."""


class UnknownModelError(ExportError):
    """The checkpoint names a model or task the exporter has no serving wrapper for."""


class ParityError(ExportError):
    """An fp32 variant differs from the eager model by more than the allowed tolerance."""


class GraphCheckError(ExportError):
    """A written graph file fails ``onnx.checker`` or does not load in its runtime."""
