"""One exported file and its parity record; turns a list of them into model.json variants and parity.json."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepserve.export.errors import ParityError
from deepserve.export.parity import THRESHOLDS, judge
from deepserve.store import Format, Precision, Variant

RUNTIMES = {"onnx": "onnxruntime (CPUExecutionProvider)", "torchscript": "torch.jit", "pt2": "torch.export"}


@dataclass
class VariantResult:
    file: str
    format: Format
    precision: Precision
    checks: list[dict[str, Any]] = field(default_factory=list)
    not_run: str | None = None  # why parity could not be measured here
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the GPT greedy-generation check
    thresholds: dict[str, float] | None = None  # None: the defaults for the precision

    def limits(self) -> dict[str, float]:
        return self.thresholds if self.thresholds is not None else THRESHOLDS[self.precision]

    def verdict(self) -> tuple[bool, str | None]:
        if self.not_run is not None:
            return False, f"parity not measured: {self.not_run}"
        ok, reason = judge(self.limits(), self.checks)
        gen = self.extra.get("greedy_generation")
        if ok and gen is not None and not gen["identical"]:
            ok, reason = False, f"greedy generation diverged from eager at token {gen['first_mismatch']}"
        return ok, reason

    def raise_if_fp32_fails(self) -> None:
        ok, reason = self.verdict()
        if self.precision == "fp32" and not ok:
            raise ParityError(f"fp32 variant {self.file} ({self.format}) failed parity: {reason}")

    def to_variant(self) -> Variant:
        ok, reason = self.verdict()
        return Variant(file=self.file, format=self.format, precision=self.precision, usable=ok, reason=reason)

    def to_json(self) -> dict[str, Any]:
        ok, reason = self.verdict()
        return {
            "file": self.file,
            "format": self.format,
            "precision": self.precision,
            "runtime": RUNTIMES[self.format],
            "thresholds": self.limits(),
            "passed": ok,
            "reason": reason,
            "checks_ran": self.not_run is None,
            "export_seconds": round(self.seconds, 2),
            "checks": self.checks,
            **self.extra,
        }


def write_parity(version_dir: Path, results: list[VariantResult], **context: Any) -> Path:
    """parity.json: the reference, the inputs used, and every variant's checks beside its thresholds."""
    doc = {**context, "variants": [r.to_json() for r in results]}
    path = version_dir / "parity.json"
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return path
