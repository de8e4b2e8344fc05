"""``deepserve import SOURCE``: write a user's model into the model store as a normal version.

SOURCE may be a URI (``s3://``, ``gs://``, ``https://``, ``file://``): it is downloaded and verified
first (``deepserve.remote_store``, into a temporary folder removed after the import, which copies
what it needs), then imported as a local source would be. The store is local.

Exit codes: 0 imported, 2 the source (or an option) is not something deepserve can serve, or a URI
source cannot be downloaded, with one line on stderr saying what is wrong and what to do; nothing
is left in the store then.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from deepserve.imports import ImportOptions, SourceError, import_source
from deepserve.imports.base import TASKS
from deepserve.remote_store import RemoteStoreError, fetch_source, store_uri


def add_import_arguments(parser: argparse.ArgumentParser) -> None:
    """The options `deepserve import` and `deepserve serve SOURCE` share."""
    parser.add_argument(
        "--task", choices=[*TASKS, "text-generation"],
        help="what the model does (default: read from the source, else raw tensors)",
    )  # fmt: skip
    parser.add_argument("--labels", type=Path, help="class labels, one per line (classification)")
    parser.add_argument("--handler", metavar="FILE:CLASS", help="your handler class (docs/handlers.md)")
    parser.add_argument(
        "--runtime", choices=["onnx", "torch"],
        help="onnx: convert to ONNX where needed (default); torch: serve the torch model",
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="deepserve import",
        description="Import a model file (.onnx, .pt, .pt2), a Hugging Face folder, a TorchServe .mar, "
        "a Triton model repository or your own handler into the model store.",
    )
    parser.add_argument("source", help="a model file or folder, or its s3:// gs:// https:// file:// URI")
    parser.add_argument("--name", help="model name in the store (default: from the source)")
    parser.add_argument("--version", type=int, help="store version (default: the next free one)")
    parser.add_argument("--store", type=Path,
                        default=Path(os.environ.get("DEEPSERVE_MODEL_STORE", "model_store")),
                        help="model store (DEEPSERVE_MODEL_STORE, default model_store)")  # fmt: skip
    parser.add_argument("--force", action="store_true", help="replace an existing --version")
    add_import_arguments(parser)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    opts = ImportOptions(
        store=args.store, name=args.name, version=args.version, task=args.task, labels=args.labels,
        handler=args.handler, runtime=args.runtime, force=args.force,
    )  # fmt: skip
    try:
        if store_uri(args.store) is not None:
            raise SourceError(
                f"--store {args.store}: deepserve import writes a local store; import into a folder, "
                "then upload it (aws s3 sync, gcloud storage rsync)"
            )
        uri = store_uri(args.source)
        if uri is None:
            written = import_source(Path(args.source), opts)
        else:
            with tempfile.TemporaryDirectory(prefix="deepserve-import-") as tmp:
                written = import_source(fetch_source(uri, Path(tmp)), opts)
    except (SourceError, RemoteStoreError) as exc:
        print(f"deepserve import: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"imported {args.source} -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
