"""The one settings class of the server (environment prefix ``DEEPSERVE_``).

Built once in ``service.__main__`` and passed into ``create_app(settings)``; request code reads
only this object, never ``os.environ``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ModelOverride(BaseModel):
    """Per-model overrides (``DEEPSERVE_MODELS='{"digits-cnn": {"precision": "fp16"}}'``)."""

    model_config = ConfigDict(extra="forbid")

    precision: Literal["fp32", "fp16", "bf16", "int8"] | None = None
    runtime: Literal["onnx", "torchscript", "pt2", "eager"] | None = None
    max_batch_size: int | None = Field(default=None, ge=1)
    max_queue_delay_ms: float | None = Field(default=None, ge=0)
    max_queue_size: int | None = Field(default=None, ge=1)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEEPSERVE_", extra="ignore")

    model_store: Path = Field(default=Path("model_store"), description="the model store to serve")
    host: str = Field(default="127.0.0.1", description="bind address; set 0.0.0.0 to serve other hosts")
    http_port: int = Field(default=8000, ge=0, le=65535)
    grpc_port: int = Field(default=8001, ge=0, le=65535, description="0 disables the gRPC server")
    enable_grpc: bool = True
    grpc_front: Literal["auto", "native", "aio"] = Field(
        default="auto",
        description="native: gRPC framed by nghttp2 inside the event loop's own callbacks (service/native, "
        "built when libnghttp2-dev is present): no thread between socket and servicer, concurrent calls "
        "batched together; aio: grpcio's grpc.aio; auto: native when built",
    )

    # batching defaults (a model's own max_batch_size from model.json caps max_batch_size)
    max_batch_size: int = Field(default=32, ge=1, description="rows per executed batch, at most")
    max_queue_delay_ms: float = Field(
        default=1.0, ge=0, description="longest wait for more rows, counted from the oldest waiting request"
    )
    preferred_batch_sizes: list[int] = Field(default_factory=list, description="cut early at these sizes")
    max_queue_size: int = Field(default=256, ge=1, description="waiting requests per model before 429")
    max_batch_tokens: int | None = Field(
        default=1024,
        ge=1,
        description="token budget per text batch (rows x padded length). On CPU a transformer gains "
        "nothing past ~1k tokens a batch (MiniLM's in-process best is 8 x 128) and bigger batches only "
        "add latency; raise it on GPUs. None = no budget",
    )
    inline_compute_ms: float = Field(
        default=0.0,
        ge=0,
        description="idle tiny models run on the event loop (0 = never; see batching.py)",
    )
    request_timeout_s: float = Field(default=30.0, gt=0, description="per-request deadline by default")
    drain_timeout_s: float = Field(default=30.0, ge=0, description="grace period for in-flight work")

    # generation engine
    max_running_sequences: int = Field(default=16, ge=1)
    max_waiting_sequences: int = Field(default=64, ge=1)

    # runtimes
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(default=None, ge=1, description="intra-op threads per model runtime")
    ort_spinning: bool = Field(
        default=False,
        description="let ONNX Runtime's intra-op threads spin between runs: 10-20% lower latency for big "
        "models on an otherwise idle box, but they burn the CPU the event loop and gRPC need",
    )
    models: dict[str, ModelOverride] = Field(default_factory=dict, description="per-model overrides")
    ready_with_failed_models: bool = Field(
        default=False, description="report ready while some store models failed to load (others serve)"
    )
    load_models: list[str] | None = Field(default=None, description="serve only these store names")

    # security and limits
    auth_token: str | None = Field(default=None, description="bearer token required for inference")
    enable_management: bool = Field(default=False, description="runtime load/unload of store models")
    management_token: str | None = Field(default=None, description="bearer token for load/unload")
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, description="larger bodies get 413")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("preferred_batch_sizes")
    @classmethod
    def _sorted_positive(cls, sizes: list[int]) -> list[int]:
        if any(s < 1 for s in sizes):
            raise ValueError("preferred_batch_sizes must be positive integers")
        return sorted(set(sizes))

    @model_validator(mode="after")
    def _management_needs_token(self) -> Settings:
        if self.enable_management and not self.management_token:
            raise ValueError(
                "enable_management=true needs DEEPSERVE_MANAGEMENT_TOKEN: load/unload is never open"
            )
        return self

    def resolved_device(self) -> str:
        """``auto`` becomes ``cuda`` when torch or ONNX Runtime sees a GPU, else ``cpu``."""
        if self.device != "auto":
            return self.device
        try:
            import onnxruntime

            if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
                return "cuda"
        except ImportError:  # pragma: no cover - onnxruntime is a dependency
            pass
        return "cpu"

    def override(self, name: str) -> ModelOverride:
        return self.models.get(name) or ModelOverride()
