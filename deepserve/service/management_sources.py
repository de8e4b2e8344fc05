"""Which file of the model store a TorchServe ``url=`` names, and nothing else.

TorchServe's ``POST /models?url=`` takes a file name in ``--model-store`` or an http(s) URL that it
downloads. An open ``url=`` (any URL, any path) let whoever reached the port load code of their
choosing: ShellTorch, CVE-2023-43654. Here ``url`` is only ever a relative path inside the model
store: a .mar, a model file or folder that ``deepserve.imports`` takes, or a store model's own
directory. URLs (any scheme), absolute paths, ``..``, backslashes, control characters and links
that lead out of the store are refused, each with a 400 saying which rule it broke.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from deepserve.service.errors import InvalidRequestError, ModelNotFoundError

ONLY_THE_STORE = "deepserve registers only what is already in the model store"


def store_path(url: str, store: Path) -> Path:
    """The existing path ``url`` names inside ``store``, resolved; a 400 (or 404) otherwise."""
    if not url:
        raise InvalidRequestError(
            "Parameter url is required: the name of a .mar (or a model file or folder) in the model store"
        )
    if any(ord(c) < 32 or ord(c) == 127 for c in url) or "\\" in url:
        raise InvalidRequestError(f"url {url!r} holds control characters or backslashes; {ONLY_THE_STORE}")
    scheme = urlsplit(url).scheme
    if scheme or url.startswith("//"):
        raise InvalidRequestError(
            f"url {url!r} is a URL ({scheme or 'network'}:): {ONLY_THE_STORE} (TorchServe's remote url= was "
            "CVE-2023-43654, ShellTorch); download the archive into the model store, then pass its file name"
        )
    relative = PurePosixPath(url)
    if relative.is_absolute() or url.startswith("~"):
        raise InvalidRequestError(
            f"url {url!r} is an absolute path: {ONLY_THE_STORE}; pass a path relative to it (e.g. model.mar)"
        )
    if ".." in relative.parts:
        raise InvalidRequestError(f"url {url!r} climbs out with '..': {ONLY_THE_STORE}")
    if not relative.parts:  # "." or "./"
        raise InvalidRequestError(f"url {url!r} names the model store itself; name a file or folder in it")
    root = store.resolve()
    path = root.joinpath(*relative.parts).resolve()
    if not path.is_relative_to(root) or path == root:
        raise InvalidRequestError(
            f"url {url!r} is a link that leads out of the model store: {ONLY_THE_STORE}"
        )
    if not path.exists():
        raise ModelNotFoundError(
            f"url {url!r}: no such file in the model store {root}; copy the archive there first"
        )
    return path


def is_store_model(path: Path, store: Path) -> bool:
    """``path`` is a model directory of the store itself (``<store>/<name>/<version>/model.json``)."""
    return (
        path.is_dir()
        and path.parent == store.resolve()
        and any(v.name.isdigit() and (v / "model.json").is_file() for v in path.iterdir())
    )
