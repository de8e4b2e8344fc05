"""``deepserve up``: build the default model store when needed (export.store), then serve it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from deepserve.service.__main__ import add_serve_arguments, run, settings_from


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="deepserve up",
        description="Build the default model store if it is missing or stale, then serve it.",
    )
    add_serve_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="tiny trainings (minutes), for a first look")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    settings = settings_from(args)
    from deepserve.export.errors import ExportError
    from deepserve.export.store import build_store  # training code is imported only when building

    try:
        build_store(settings.model_store, quick=args.quick)
    except ExportError as exc:  # e.g. a serving-only install: it says what to install
        print(f"deepserve up: {exc}", file=sys.stderr)
        return 1
    return run(settings)


if __name__ == "__main__":
    raise SystemExit(main())
