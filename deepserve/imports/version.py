"""A deepserve store version made elsewhere (a folder with model.json): checked, then taken as is.

This is how a version exported on another machine, or laid out by KServe's storage initializer
under ``/mnt/models``, joins a store: the schema is validated and every variant file must be there,
so a half-copied folder is refused here instead of failing at load time.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from deepserve.imports.base import ImportOptions, SourceError, place, write_version
from deepserve.store import ModelSpec


def import_store_version(source: Path, opts: ImportOptions) -> list[Path]:
    try:
        spec = ModelSpec.read(source)
    except (ValidationError, ValueError, OSError) as exc:
        first = str(exc).splitlines()[0]
        msg = f"{source / 'model.json'} is not a deepserve model.json ({first}); re-export it"
        raise SourceError(msg) from exc
    missing = [v.file for v in spec.variants if not (source / v.file).exists()]
    if missing:
        raise SourceError(f"{source} lacks the files its model.json names: {missing}; copy the whole version")
    opts = opts.named(spec.name)

    def fill(tmp: Path, version: int) -> ModelSpec:
        for path in sorted(source.iterdir()):
            if path.name != "model.json" and not path.name.startswith("."):
                place(path, tmp / path.name, link=opts.link)
        return spec.model_copy(update={"name": opts.name, "version": version})

    return [write_version(opts, fill)]
