"""Bring your own model: ``deepserve import SOURCE`` and ``deepserve serve SOURCE``.

    import_source(Path("model.onnx"), ImportOptions(store=Path("model_store"), task="classification"))

What a source is, decided by ``detect`` (first rule that matches):

    --handler FILE:CLASS given           your deepserve handler, the source its model files   custom
    *.onnx / *.pt / *.pt2 file           a graph file (ONNX, TorchScript, torch.export)        graph_file
    *.mar file                           a TorchServe archive, its handler run unchanged       mar
    folder with config.pbtxt             one Triton model (the folder name is its name)        triton
    folder whose subfolders have one     a Triton model repository (every model in it)         triton
    folder with config.json              a Hugging Face model folder (transformers)            hf
    folder with model.json               a deepserve store version (exported elsewhere)       version
    folder holding one model file        that file (KServe's storage initializer lays out      (its kind)
                                         a single-file storageUri this way: /mnt/models/x.onnx)

Each importer writes normal model-store versions (``deepserve.imports.base.write_version``) and
raises ``SourceError`` with a one-line message for anything it cannot serve.
"""

from __future__ import annotations

import importlib
from dataclasses import replace
from pathlib import Path

from deepserve.imports.base import ImportOptions, SourceError

__all__ = ["ImportOptions", "SourceError", "detect", "import_source"]

# kind -> "module:function(source, opts) -> list[Path]"
IMPORTERS = {
    "custom": "deepserve.imports.custom:import_custom_handler",
    "graph_file": "deepserve.imports.graph_file:import_graph_file",
    "mar": "deepserve.imports.mar:import_mar",
    "triton": "deepserve.imports.triton:import_triton",
    "hf": "deepserve.imports.hf:import_hf_folder",
    "version": "deepserve.imports.version:import_store_version",
}
GRAPH_SUFFIXES = (".onnx", ".pt", ".pt2")


def is_triton_repository(path: Path) -> bool:
    return path.is_dir() and any((child / "config.pbtxt").is_file() for child in path.iterdir())


def model_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (*GRAPH_SUFFIXES, ".mar"))


def resolve(source: Path, opts: ImportOptions) -> tuple[str, Path]:
    """The importer for ``source`` and the path it gets (a folder holding one model file gives the file)."""
    kind = detect(source, opts)
    if kind == "folder":
        [source] = model_files(source)
        kind = detect(source, opts)
    return kind, source


def detect(source: Path, opts: ImportOptions) -> str:
    """Which importer handles ``source`` (rules in the module docstring); "folder" for a folder
    holding exactly one model file."""
    if not source.exists():
        raise SourceError(f"{source} does not exist")
    if opts.handler is not None:
        return "custom"
    if source.is_file():
        if source.suffix in GRAPH_SUFFIXES:
            return "graph_file"
        if source.suffix == ".mar":
            return "mar"
        raise SourceError(
            f"{source} is not a model file deepserve knows (.onnx, .pt TorchScript, .pt2 torch.export, "
            ".mar TorchServe archive); for your own code pass --handler FILE:CLASS"
        )
    if (source / "config.pbtxt").is_file() or is_triton_repository(source):
        return "triton"
    if (source / "config.json").is_file():
        return "hf"
    if (source / "model.json").is_file():
        return "version"
    if len(model_files(source)) == 1:
        return "folder"
    raise SourceError(
        f"{source} is a folder deepserve cannot tell apart: not a Hugging Face folder (no config.json), "
        "not a Triton repository (no <model>/config.pbtxt), not a store version (no model.json), not one "
        "model file; name the file, or for your own code pass --handler FILE:CLASS"
    )


def import_source(source: Path, opts: ImportOptions) -> list[Path]:
    """Import ``source`` into ``opts.store``; the version directories written (a Triton repository
    gives one per model and version)."""
    kind, source = resolve(Path(source), opts)
    module_name, function = IMPORTERS[kind].split(":")
    importer = getattr(importlib.import_module(module_name), function)
    # a store version keeps its own origin (None when our exporter made it)
    written: list[Path] = importer(source, replace(opts, kind=None if kind == "version" else kind))
    return written
