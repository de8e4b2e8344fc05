"""A tree of files under a URI (``s3://``, ``gs://``, ``https://``, ``file://``), copied into a local
directory whole and verified, or not at all.

fsspec does the protocols (s3fs, gcsfs, its own HTTP and local filesystems); each library finds
its credentials the standard way (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_ENDPOINT_URL[_S3]`` and the rest of botocore's chain, ``GOOGLE_APPLICATION_CREDENTIALS``
and Google's default credentials): deepserve has no credential settings of its own.

A copy is built in a hidden temporary directory and renamed into place only when every file is
there and verified (``deepserve.version_dir.staged_version``), so a failed or cut-short download
never leaves anything a server could load. What is verified, per file:

- its size, against the store's listing: always (catches a transfer cut short);
- its SHA-256, against a ``SHA256SUMS`` file at the top of the tree when there is one (the
  ``sha256sum`` tool's format, written where the store was built): end to end, so an object
  uploaded short or corrupted in the store is caught too;
- the store's own content MD5 where the listing gives one that is always the content's (GCS's
  ``md5Hash``). S3 ETags are not used: an SSE-KMS object's ETag is no MD5 and a listing does not
  say which objects are encrypted. botocore checks a whole-object GET against the object's CRC
  itself where the object has one (s3fs fetches files over 50 MiB in parallel ranges, which it
  cannot check: SHA256SUMS covers those).

A copy records what it was made from (``.deepserve-remote.json``: each file's size and ETag /
generation / modification time); a later start whose listing matches uses it without
downloading again.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepserve.version_dir import staged_version

MANIFEST = "SHA256SUMS"
RECORD = ".deepserve-remote.json"
# what tells that an object changed, first present wins: S3's and HTTP's ETag, GCS's generation,
# then modification times (HTTP Last-Modified, S3 LastModified, local mtime)
MARKERS = ("ETag", "generation", "md5Hash", "Last-Modified", "LastModified", "mtime")
HINTS = {
    "s3": "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for servers other than AWS)",
    "gs": "check GOOGLE_APPLICATION_CREDENTIALS (a service account key file) or the node's service account",
}
HINTS["gcs"] = HINTS["gs"]


class RemoteStoreError(ValueError):
    """A URI could not be listed or a file of it downloaded; the message is one line saying what to do."""


@dataclass(frozen=True)
class RemoteFile:
    path: str  # where it goes in the copy: relative to the listed root, "/"-separated
    url: str  # where it comes from
    size: int
    marker: str  # changes when the object does (see MARKERS)
    md5: str | None = None  # hex; only where it is always the content's MD5 (GCS)


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {text}"


class RemoteTree:
    """The files under one URI, through fsspec."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.scheme = uri.split("://", 1)[0].lower()
        try:
            import fsspec
        except ImportError:
            raise RemoteStoreError(
                f"{uri}: object storage needs fsspec: pip install 'deepserve[remote]'"
            ) from None
        try:
            self.fs, root = fsspec.core.url_to_fs(uri)
        except (ImportError, ValueError) as exc:  # fsspec: "Install s3fs to access S3", unknown protocol
            raise RemoteStoreError(f"{uri}: {one_line(exc)}; pip install 'deepserve[remote]'") from None
        self.root = str(root).rstrip("/")

    def is_dir(self) -> bool:
        """The URI names a folder (a prefix), not one object."""
        if self.scheme in ("http", "https"):  # a folder is an index page; a model file is never HTML
            if self.uri.endswith("/"):
                return True
            try:
                return str(self.fs.info(self.root).get("mimetype", "")).startswith("text/html")
            except Exception:  # list() reports what is wrong with the URL
                return False
        return not self.fs.isfile(self.root)  # a folder on errors too: find() then reports them

    def list(self, folder: bool | None = None) -> list[RemoteFile]:
        """Every file under the URI, or the one file it names (by its base name); ``folder``: what the
        URI is, when the caller knows (None: ask the store)."""
        try:
            self.fs.invalidate_cache()  # a listing from before (fsspec keeps them) would hide new uploads
            if not (self.is_dir() if folder is None else folder):
                return [self._file(self.root.rsplit("/", 1)[-1], self.root, self.fs.info(self.root))]
            # HTTP: links on an index page resolve against its URL, which must end in "/"
            top = self.root + "/" if self.scheme in ("http", "https") else self.root
            found: dict[str, dict[str, Any]] = self.fs.find(top, detail=True)
            files = []
            for name, info in sorted(found.items()):
                rel = self._relative(str(name))
                if rel is not None:
                    # HTTP index pages list links, not sizes: ask for each
                    files.append(self._file(rel, str(name), info if info.get("size") is not None
                                            else self.fs.info(name)))  # fmt: skip
            return files
        except RemoteStoreError:
            raise
        except Exception as exc:  # the libraries raise their own types (botocore, google.auth, aiohttp)
            raise self._error("cannot list", self.uri, exc) from None

    def _relative(self, name: str) -> str | None:
        prefix = self.root + "/"
        if not name.startswith(prefix) or name.endswith("/"):  # S3 consoles' empty "folder/" objects
            return None
        rel = name[len(prefix) :]
        if any(p in ("", ".", "..") for p in rel.split("/")):  # a key must not reach outside the copy
            raise RemoteStoreError(
                f"{self.uri.rstrip('/')}/{rel}: an object name with an empty, '.' or '..' part"
            )
        return rel

    def _file(self, rel: str, name: str, info: dict[str, Any]) -> RemoteFile:
        marker = next((str(info[k]) for k in MARKERS if info.get(k)), "")
        md5 = info.get("md5Hash")  # GCS: base64 of the content's MD5 (absent for composite objects)
        url = str(self.fs.unstrip_protocol(name))
        return RemoteFile(rel, url, int(info["size"]), marker, base64.b64decode(md5).hex() if md5 else None)

    def get(self, file: RemoteFile, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.fs.get_file(file.url, str(target))
        except Exception as exc:  # as in list()
            raise self._error("cannot download", file.url, exc) from None

    def _error(self, what: str, url: str, exc: BaseException) -> RemoteStoreError:
        hint = HINTS.get(self.scheme, "") if isinstance(exc, PermissionError) else ""
        return RemoteStoreError(f"{what} {url}: {one_line(exc)}" + (f"; {hint}" if hint else ""))


def localize(tree: RemoteTree, files: list[RemoteFile], store: Path, name: str, version: int,
             under: str = "") -> Path:  # fmt: skip
    """``store/name/version`` holding ``files`` (in its folder ``under``): the cached copy when it
    matches the listing, else a verified download renamed into place."""
    final = store / name / str(version)
    record = {"files": [[f.url, f.path, f.size, f.marker] for f in files]}
    if _is_current(final / under, final / RECORD, record, files):
        return final
    with staged_version(store, name, version) as tmp:
        top = tmp / under
        for f in files:
            tree.get(f, top.joinpath(*f.path.split("/")))
        verify(top, files)
        (tmp / RECORD).write_text(json.dumps(record))
    return final


def _is_current(top: Path, record_file: Path, record: dict[str, Any], files: list[RemoteFile]) -> bool:
    try:
        return bool(json.loads(record_file.read_text()) == record) and all(
            top.joinpath(*f.path.split("/")).stat().st_size == f.size for f in files
        )
    except (OSError, ValueError):  # no copy yet, or one damaged since
        return False


def verify(top: Path, files: list[RemoteFile]) -> None:
    """Raise RemoteStoreError unless every file has its listed size, MD5 and SHA256SUMS digest."""
    manifest = next((f for f in files if f.path == MANIFEST), None)
    sums = _manifest(top / MANIFEST, manifest.url) if manifest is not None else {}
    missing = sorted(set(sums) - {f.path for f in files})
    if missing:
        raise RemoteStoreError(f"{missing[0]}: listed in {manifest.url if manifest else MANIFEST} "
                               "but not in the store; upload it")  # fmt: skip
    for f in files:
        path = top.joinpath(*f.path.split("/"))
        got = path.stat().st_size
        if got != f.size:
            raise RemoteStoreError(
                f"{f.url}: {got} bytes downloaded, the store lists {f.size}: the download was cut short; "
                "it is tried again at the next start"
            )
        if f.path not in sums and not f.md5:
            continue
        sha256, md5 = _digests(path)
        if f.path in sums and sha256 != sums[f.path]:
            raise RemoteStoreError(
                f"{f.url}: its SHA-256 {sha256[:16]}... is not the {sums[f.path][:16]}... that {MANIFEST} "
                "records: the object is truncated or corrupt in the store; upload it again"
            )
        if f.md5 and md5 != f.md5:
            raise RemoteStoreError(
                f"{f.url}: its MD5 is not the one the store lists: the download is corrupt; it is tried "
                "again at the next start"
            )


def _manifest(path: Path, url: str) -> dict[str, str]:
    """``sha256sum`` output: ``<64 hex> <space or *><relative path>`` a line."""
    sums = {}
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        match = re.fullmatch(r"([0-9a-fA-F]{64}) [ *](?:\./)?(.+)", line.strip())
        if line.strip() and match is None:
            raise RemoteStoreError(f"{url} line {n} is not '<sha256>  <file>' (what sha256sum writes)")
        if match is not None:
            sums[match[2]] = match[1].lower()
    return sums


def _digests(path: Path) -> tuple[str, str]:
    sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            sha256.update(chunk)
            md5.update(chunk)
    return sha256.hexdigest(), md5.hexdigest()
