"""One checkpoint = one file: ``{"model_name", "config", "state_dict", "meta"}``.

The model is rebuilt by name from the registry (``models.build_model``), never unpickled:
loading uses ``torch.load(..., weights_only=True)``, which refuses arbitrary Python objects, so
``meta`` holds only plain values (str, int, float, bool, None, lists and dicts of them).

``meta`` keys written by the trainer:
    task             "classification" | "regression" | "embedding" | "text-generation" | "image-generation"
    labels           class names (classification)
    preprocessing    a dict shaped like one of the deepserve.store *Preprocessing models
    generation       a dict shaped like deepserve.store.GenerationDefaults (generative models)
    metrics          final test / validation metrics
    data_fingerprint "sha256:<hex>" of the training data
    recipe           built-in recipe name or "custom"
    train_config     the TrainConfig as a dict
    assets           files export writes beside the graph, {name: text} (a subword model's tokenizer.json)
    transfer         the transfer-learning regime (finetune.py), with pretrained_on and unfreezing
    torch_version, created (ISO-8601 UTC)
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepserve.models import build_model

_KEYS = ("model_name", "config", "state_dict", "meta")


class CheckpointError(ValueError):
    """The file is missing, corrupt, or not a deepserve checkpoint."""


@dataclass
class Checkpoint:
    model_name: str
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    def build(self) -> nn.Module:
        """Rebuild the model from the registry and load the weights (eval mode)."""
        model = build_model(self.model_name, **self.config)
        model.load_state_dict(self.state_dict)
        return model.eval()

    @property
    def task(self) -> str:
        return str(self.meta.get("task", ""))


def fingerprint(*arrays: Any) -> str:
    """A stable sha256 over the bytes of the given arrays / tensors / strings."""
    digest = hashlib.sha256()
    for a in arrays:
        if isinstance(a, str):
            digest.update(a.encode("utf-8"))
        elif isinstance(a, bytes):
            digest.update(a)
        else:
            t = torch.as_tensor(a).contiguous()
            digest.update(str(tuple(t.shape)).encode())
            digest.update(t.numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def save_checkpoint(ckpt: Checkpoint, path: str | os.PathLike[str]) -> Path:
    """Write atomically (temp file + rename), so a crash never leaves a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch_version": str(torch.__version__), "created": datetime.now(UTC).isoformat(), **ckpt.meta}
    payload = {
        "model_name": ckpt.model_name,
        "config": dict(ckpt.config),
        "state_dict": {k: v.detach().cpu() for k, v in ckpt.state_dict.items()},
        "meta": meta,
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Load with ``weights_only=True``; raise :class:`CheckpointError` with a clear message."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any file that is not a checkpoint fails somewhere inside the unpickler
        reason = f"{type(exc).__name__}: {exc}"
        raise CheckpointError(f"{path} is not a readable torch checkpoint ({reason})") from exc
    if not isinstance(payload, dict) or any(k not in payload for k in _KEYS):
        expected = list(_KEYS)
        raise CheckpointError(f"{path} is not a deepserve checkpoint: expected a dict with keys {expected}")
    return Checkpoint(
        model_name=str(payload["model_name"]),
        config=dict(payload["config"]),
        state_dict=dict(payload["state_dict"]),
        meta=dict(payload["meta"]),
    )
