"""``deepserve export CHECKPOINT [--name N] [--version V] [--force] [--mar] [--store DIR]``.

Errors (missing or corrupt checkpoint, unknown model, existing version, failed parity) print one
line saying what to do and exit 1; nothing half-written is left in the store.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from deepserve.export.errors import ExportError
from deepserve.training.checkpoint import CheckpointError
from deepserve.version_dir import VersionExistsError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="deepserve export", description="export a checkpoint into the model store"
    )
    p.add_argument("checkpoint", type=Path, help="checkpoint.pt written by `deepserve train`")
    p.add_argument("--name", help="store model name (default: the recipe name, else the model name)")
    p.add_argument("--version", type=int, help="integer version (default: highest existing + 1)")
    p.add_argument("--force", action="store_true", help="replace the version if it exists")
    p.add_argument(
        "--mar", action="store_true", help="also build a TorchServe .mar (needs torch-model-archiver)"
    )
    p.add_argument("--store", type=Path, default=Path("model_store"), help="model store directory")
    return p


def _summary(version_dir: Path) -> str:
    spec = json.loads((version_dir / "model.json").read_text(encoding="utf-8"))
    flags = [f"{v['file']}{'' if v['usable'] else ' (unusable)'}" for v in spec["variants"]]
    return f"{version_dir}: {spec['task']}; " + ", ".join(flags)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    from deepserve.export.exporter import export_checkpoint

    start = time.perf_counter()
    try:
        written = export_checkpoint(
            args.checkpoint, args.store, name=args.name, version=args.version, force=args.force, mar=args.mar
        )
    except (CheckpointError, ExportError, VersionExistsError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"deepserve export: error: {first}", file=sys.stderr)  # torch's load errors run to many lines
        return 1
    for path in written:
        print(_summary(path))
    print(f"exported in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
