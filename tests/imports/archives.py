"""TorchServe archives for the import tests, and TorchServe itself as the reference.

``build_mar`` packs with torch-model-archiver's own Python API (the archives users have);
``zip_mar`` writes one by hand, for the broken ones the archiver would refuse to make.
``torchserve_answers`` runs a handler the way a TorchServe worker does (``TsModelLoader.load``
then ``Service.predict`` on the frontend's wire records) and decodes the worker's reply, so a
test compares deepserve's hosted answer with TorchServe's own.
"""

from __future__ import annotations

import io
import json
import os
import struct
import sys
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

LABELS = {"0": "ant", "1": "bee", "2": "cat", "3": "dog", "4": "eel"}

# A TorchServe handler as its users write them: BaseHandler loads the TorchScript file and the
# label map; preprocess/postprocess are the user's. It reads two request headers, and answers a
# body that is no image with a 400 of its own (context.set_response_status), for that request only.
TAGGED_CLASSIFIER = '''\
"""Image classifier that answers top-k (header X-Top-K) and echoes header X-Request-Tag."""
import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import map_class_to_label


class TaggedClassifier(BaseHandler):
    size = 32

    def preprocess(self, data):
        self.rejected = {}
        images = []
        for idx, row in enumerate(data):
            raw = row.get("data") or row.get("body")
            try:
                image = Image.open(io.BytesIO(raw)).convert("RGB").resize((self.size, self.size))
            except Exception as exc:
                self.rejected[idx] = f"not an image ({type(exc).__name__})"
                self.context.set_response_status(400, self.rejected[idx], idx)
                image = Image.new("RGB", (self.size, self.size))
            pixels = np.asarray(image, dtype=np.float32) / 255.0
            images.append(torch.from_numpy(pixels).permute(2, 0, 1))
        return torch.stack(images)

    def postprocess(self, data):
        answers = []
        for idx, probs in enumerate(F.softmax(data, dim=1)):
            if idx in self.rejected:
                answers.append({"error": self.rejected[idx]})
                continue
            k = int(self.context.get_request_header(idx, "X-Top-K") or 3)
            top, classes = torch.topk(probs, k)
            [labels] = map_class_to_label([top.tolist()], self.mapping, [classes.tolist()])
            answers.append({"labels": labels, "tag": self.context.get_request_header(idx, "X-Request-Tag")})
        return answers
'''

# A `module:function` entry point, TorchServe's other handler form (called with data=None at load).
SHOUT = """\
def handle(data, context):
    if data is None:
        return None
    answers = []
    for row in data:
        text = row.get("data") or row.get("body")
        text = text.decode() if isinstance(text, (bytes, bytearray)) else str(text)
        params = {k: v.decode() for k, v in row.items() if k not in ("data", "body")}
        answers.append({"shout": text.upper(), "params": params, "model": context.model_name})
    return answers
"""

BROKEN = "class Handler:\n    def handle(self, data, context)\n        return data\n"  # line 2: no colon


def tiny_classifier(path: Path, classes: int = len(LABELS)) -> Path:
    """A TorchScript image classifier for any image size: (B, 3, H, W) -> logits (B, classes)."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, kernel_size=4, stride=4),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, classes),
    ).eval()
    with warnings.catch_warnings():
        # TorchScript is deprecated (a DeprecationWarning in torch 2.13, later a FutureWarning): still
        # the format TorchServe's BaseHandler loads
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(model), str(path))
    return path


def png(seed: int, size: tuple[int, int] = (40, 30)) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def build_mar(
    out_dir: Path, name: str, handler: str, *, serialized: Path | None = None,
    extra: list[Path] | None = None, config: Path | None = None,
) -> Path:  # fmt: skip
    """``torch-model-archiver --model-name NAME --handler HANDLER ...`` through its Python API."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # its version.py leaves version.txt open
        from model_archiver.model_archiver_config import ModelArchiverConfig
        from model_archiver.model_packaging import package_model
        from model_archiver.model_packaging_utils import ModelExportUtils

    config_ = ModelArchiverConfig(
        model_name=name, handler=handler, version="1.0",
        serialized_file=str(serialized) if serialized else None,
        extra_files=",".join(str(p) for p in extra or []) or None, export_path=str(out_dir), force=True,
        config_file=str(config) if config else None,
    )  # fmt: skip
    package_model(config_, manifest=ModelExportUtils.generate_manifest_json(config_))
    return out_dir / f"{name}.mar"


def zip_mar(path: Path, manifest: dict[str, Any], files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
        for name, data in files.items():
            archive.writestr(name, data)
    return path


# -- TorchServe itself, as the reference ---------------------------------------------------------------
@dataclass
class Call:
    """One request as TorchServe's frontend hands it to the worker."""

    body: Any
    content_type: str = "application/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)


def torchserve_answers(archive: Path, into: Path, calls: list[Call]) -> list[tuple[int, Any]]:
    """(status, decoded body) per call, from TorchServe's worker code running ``archive``'s handler
    on ``calls`` as one batch (unpacked into ``into``, model_dir on sys.path as the worker has it)."""
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(into)
    manifest = json.loads((into / "MAR-INF" / "MANIFEST.json").read_text())
    with _worker_imports(into), warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # ts opens files it never closes
        # BaseHandler loads TorchScript, deprecated in torch >= 2.14 with a FutureWarning
        warnings.filterwarnings("ignore", r".*torch\.jit\.load.* is deprecated", FutureWarning)
        import ts
        from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
        from ts.model_loader import TsModelLoader

        metrics = MetricsCacheYamlImpl(
            config_file_path=str(Path(ts.__file__).parent / "configs/metrics.yaml")
        )
        metrics.initialize_cache()
        metrics.model_name = manifest["model"]["modelName"]
        service = TsModelLoader().load(
            metrics.model_name,
            str(into),
            manifest["model"]["handler"],
            None,
            len(calls),
            metrics_cache=metrics,
        )
        service.set_cl_socket(None)
        reply = service.predict([_record(i, c) for i, c in enumerate(calls)])
    return decode_reply(reply)


def _record(idx: int, call: Call) -> dict[str, Any]:
    query = [{"name": k, "contentType": "", "value": v.encode()} for k, v in call.query.items()]
    return {
        "requestId": f"req-{idx}".encode(),
        "parameters": [*query, {"name": "body", "contentType": call.content_type, "value": call.body}],
        "headers": [{"name": k.encode(), "value": v.encode()} for k, v in call.headers.items()],
    }


@contextmanager
def _worker_imports(model_dir: Path) -> Iterator[None]:
    before = set(sys.modules)
    sys.path.insert(0, str(model_dir))
    try:
        yield
    finally:
        sys.path.remove(str(model_dir))
        for name in set(sys.modules) - before:
            file = getattr(sys.modules[name], "__file__", None) or ""
            if os.path.abspath(file).startswith(str(model_dir)):
                del sys.modules[name]


def decode_reply(reply: bytes | bytearray) -> list[tuple[int, Any]]:
    """The worker's predict response (``otf_message_handler.create_predict_response``)."""
    view, at = memoryview(bytes(reply)), 0

    def take_int() -> int:
        nonlocal at
        (value,) = struct.unpack("!i", view[at : at + 4])
        at += 4
        return int(value)

    def take_bytes() -> bytes:
        nonlocal at
        n = take_int()
        chunk = bytes(view[at : at + n])
        at += n
        return chunk

    batch_code, _ = take_int(), take_bytes()
    answers: list[tuple[int, Any]] = []
    while (n := take_int()) != -1:
        at += n  # request id
        take_bytes()  # content type
        status = take_int()
        take_bytes()  # phrase
        for _ in range(take_int()):  # response headers
            take_bytes(), take_bytes()
        body = take_bytes()
        answers.append((status if batch_code == 200 else batch_code, _json_or_bytes(body)))
    return answers


def _json_or_bytes(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body
