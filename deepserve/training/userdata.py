"""The user's own data: a CSV, an image folder (one sub-folder per class), a text file.

Every problem found raises ``DataError`` with one line naming it and what to do; the CLI turns
that into exit code 2 (never a traceback).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch

from deepserve.training.data import DataError, TaskData, image_data, tabular_data
from deepserve.training.textdata import lm_data

MIN_ROWS = 10
MIN_IMAGES = 5
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
MAX_CLASSES_GUESS = 20  # an integer label with more distinct values is taken as a regression target


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    if not path.is_file():
        raise DataError(f"CSV file not found: {path}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if any(cell.strip() for cell in r)]
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte {exc.start}); save the CSV as UTF-8") from None
    except csv.Error as exc:
        raise DataError(f"{path} is not a valid CSV ({exc})") from None
    if not rows:
        raise DataError(f"{path} is empty; expected a header row and data rows")
    return [h.strip() for h in rows[0]], rows[1:]


def _float(value: str, column: str, row: int) -> float:
    try:
        v = float(value)
    except ValueError:
        raise DataError(
            f"column {column!r} is not numeric (row {row}: {value!r}); feature columns must be numbers, "
            f"or pass --one-hot {column} to one-hot encode it"
        ) from None
    if not math.isfinite(v):
        raise DataError(f"column {column!r} has a missing or non-finite value at row {row}")
    return v


def _numeric(values: list[str]) -> bool:
    try:
        return all(math.isfinite(float(v)) for v in values)
    except ValueError:
        return False


def _guess_task(values: list[str]) -> str:
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        return "classification"
    integral = all(n.is_integer() for n in numbers)
    return "classification" if integral and len(set(numbers)) <= MAX_CLASSES_GUESS else "regression"


def _categorical(columns: dict[str, list[str]], one_hot: list[str] | None) -> list[str]:
    """The columns to one-hot: those named, or (``--one-hot`` alone) every non-numeric one."""
    if one_hot is None:
        return []
    unknown = [c for c in one_hot if c not in columns]
    if unknown:
        names, bad = ", ".join(columns), ", ".join(unknown)
        raise DataError(f"--one-hot column(s) {bad} are not features; the features are: {names}")
    return list(one_hot) or [c for c, values in columns.items() if not _numeric(values)]


def _features(
    columns: dict[str, list[str]], one_hot: list[str] | None
) -> tuple[torch.Tensor, dict[str, list[str]]]:
    """(N, F) float features (category codes in categorical columns) and each such column's categories."""
    categorical = _categorical(columns, one_hot)
    categories: dict[str, list[str]] = {}
    out = []
    for name, values in columns.items():
        if name in categorical:
            if any(v == "" for v in values):
                raise DataError(f"column {name!r} has empty cells; fill them (say 'unknown') or drop rows")
            categories[name] = sorted(set(values))
            code = {v: float(i) for i, v in enumerate(categories[name])}
            out.append([code[v] for v in values])
        else:
            out.append([_float(v, name, n) for n, v in enumerate(values, start=2)])
    return torch.tensor(out, dtype=torch.float32).T.contiguous(), categories


def load_csv(
    path: Path,
    label: str,
    task: str | None = None,
    *,
    scaler: str = "standard",
    one_hot: list[str] | None = None,
) -> TaskData:
    """``one_hot``: None = every feature must be numeric; [] = one-hot every non-numeric column;
    names = one-hot those columns (numeric codes such as a zip code included)."""
    header, rows = _read_csv(path)
    if label not in header:
        raise DataError(f"label column {label!r} not found in {path.name}; columns are: {', '.join(header)}")
    if len(rows) < MIN_ROWS:
        raise DataError(
            f"too few rows in {path.name}: {len(rows)}; need at least {MIN_ROWS} to split train / val / test"
        )
    if len(header) < 2:
        raise DataError(f"{path.name} has no feature columns besides the label {label!r}")
    li = header.index(label)
    for n, r in enumerate(rows, start=2):
        if len(r) != len(header):
            raise DataError(f"row {n} of {path.name} has {len(r)} fields, the header has {len(header)}")
    columns = {h: [r[i].strip() for r in rows] for i, h in enumerate(header) if i != li}
    x, categories = _features(columns, one_hot)
    values = [r[li].strip() for r in rows]
    if any(v == "" for v in values):
        raise DataError(f"label column {label!r} has empty cells; fill or drop those rows")
    task = task or _guess_task(values)
    common = {"source": str(path), "scaler": scaler, "categories": categories}
    if task == "regression":
        y = torch.tensor([_float(v, label, n) for n, v in enumerate(values, start=2)])
        return tabular_data(x, y, list(columns), targets=[label], **common)  # type: ignore[arg-type]
    classes = sorted(set(values))
    if len(classes) < 2:
        raise DataError(f"label column {label!r} has a single class {classes[0]!r}; need at least two")
    y = torch.tensor([classes.index(v) for v in values])
    return tabular_data(x, y, list(columns), labels=classes, **common)  # type: ignore[arg-type]


def _class_images(folder: Path) -> dict[str, list[Path]]:
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{folder} is empty: expected one sub-folder of images per class")
    found = {c.name: sorted(f for f in c.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) for c in classes}
    for name, files in found.items():
        if not files:
            raise DataError(
                f"class folder {name!r} in {folder} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
            )
    if len(found) < 2:
        raise DataError(f"{folder} has a single class folder {classes[0].name!r}; need at least two classes")
    return found


def load_image_folder(folder: Path, image_size: int = 32) -> TaskData:
    """Images resized to ``image_size`` squared; greyscale when every image is, else RGB."""
    from PIL import Image, UnidentifiedImageError

    found = _class_images(folder)
    total = sum(len(v) for v in found.values())
    if total < MIN_IMAGES:
        raise DataError(f"too few images in {folder}: {total}; need at least {MIN_IMAGES}")
    images, ys = [], []
    for y, files in enumerate(found.values()):
        for f in files:
            try:
                with Image.open(f) as im:
                    images.append(im.copy())
            except (UnidentifiedImageError, OSError) as exc:
                raise DataError(f"cannot read image {f}: {exc}") from None
            ys.append(y)
    mode = "L" if all(im.mode in ("L", "1", "I;16", "I") for im in images) else "RGB"
    arrays = [
        np.asarray(im.convert(mode).resize((image_size, image_size)), dtype=np.float32) for im in images
    ]
    c = 1 if mode == "L" else 3
    pixels = torch.from_numpy(np.stack(arrays)).reshape(len(arrays), image_size, image_size, c)
    pixels = pixels.permute(0, 3, 1, 2) / 255.0  # (N, C, H, W) in [0, 1]
    return image_data(pixels.contiguous(), torch.tensor(ys), list(found), str(folder))


def load_text(path: Path, context: int) -> TaskData:
    if not path.is_file():
        raise DataError(f"text file not found: {path}")
    data = path.read_bytes()
    if not data.strip():
        raise DataError(f"{path} is empty; a language model needs text to learn from")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not UTF-8 text (invalid byte at offset {exc.start}); convert it to UTF-8"
        ) from None
    if b"\x00" in data:
        raise DataError(f"{path} contains NUL bytes; token id 0 is reserved for padding")
    return lm_data(data, context, source=str(path))
