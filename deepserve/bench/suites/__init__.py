"""Named benchmark suites: ``deepserve bench --suite NAME [options]``.

Each suite is a module with ``main(argv) -> int`` that runs its measurements in one go and writes
its page under ``bench/results/<suite>/`` (``deepserve bench --suite NAME --help`` for its options).
"""

from __future__ import annotations

import importlib

# suite -> what it measures
SUITES: dict[str, str] = {
    "classifiers": "seeded ResNet-18-shaped CNN and tiny MLP vs a naive server, the in-process "
    "ceiling and perf_analyzer",
    "defaults": "the default models of a store (digits-cnn, tabular-mlp, minilm, docs-gpt)",
    "generation": "the generation engine's concurrent streams vs the same requests one at a time",
    "openai-streams": "generation through the server with the openai SDK: concurrent vs one by one, time to "
    "first token, inter-token latency while a long prompt joins",
    "compare": "tiny MLP beside Triton (PyTriton), TorchServe and a naive server, HTTP and gRPC, one run",
}


def run_suite(name: str, argv: list[str]) -> int:
    if name not in SUITES:
        raise SystemExit(f"unknown suite {name!r}: choose one of {', '.join(SUITES)}")
    module = importlib.import_module(f"{__name__}.{name.replace('-', '_')}")  # openai-streams: openai_streams
    return int(module.main(argv) or 0)
