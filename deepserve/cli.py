"""The `deepserve` command: one entry point that hands each subcommand to the package owning it.

Subcommands import lazily, so `deepserve serve` never imports the training code and
`deepserve --help` stays fast.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module of the deepserve package exposing `main(argv) -> int`, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("training.train", "train a built-in recipe or your own CSV / image folder / text file"),
    "cluster": ("training.clustering", "fit k-means on an embedding model's vectors; serve the clusters"),
    "export": ("export.__main__", "export a checkpoint to TorchScript / torch.export / ONNX (+fp16, int8)"),
    "store": ("export.store", "build or refresh the default model store"),
    "import": ("imports.__main__", "import a model file, HF folder, .mar, Triton repo or handler"),
    "serve": ("service.__main__", "serve a model store (and model files or folders) over HTTP and gRPC"),
    "up": ("service.up", "build the default model store if needed, then serve it"),
    "bench": ("bench.__main__", "load-test a running server (or one it starts) and plot the results"),
}


def _usage() -> str:
    lines = ["usage: deepserve <command> [options]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "Run `deepserve <command> --help` for the options of one command."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"deepserve: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"deepserve.{SUBCOMMANDS[name][0]}")
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
