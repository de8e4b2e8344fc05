"""Operator tools of the bench: the perf_analyzer installer, per-thread CPU of a running server."""
