"""The one settings class of the server (environment prefix ``DEEPSERVE_``).

Built once in ``service.__main__`` and passed to the ``DataPlane`` and the transports; request code reads
only this object, never ``os.environ``.
"""

from __future__ import annotations

from pathlib import Path, PurePath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from deepserve.remote_store import cache_dir, default_cache_root, store_uri
from deepserve.service.devices import parse_device, parse_devices


class ModelOverride(BaseModel):
    """Per-model overrides (``DEEPSERVE_MODELS='{"digits-cnn": {"precision": "fp16"}}'``)."""

    model_config = ConfigDict(extra="forbid")

    precision: Literal["fp32", "fp16", "bf16", "int8"] | None = None
    runtime: Literal["onnx", "torchscript", "pt2", "transformers", "eager"] | None = None
    max_batch_size: int | None = Field(default=None, ge=1)
    max_queue_delay_ms: float | None = Field(default=None, ge=0)
    max_queue_size: int | None = Field(default=None, ge=1)
    device: str | None = Field(default=None, description="the GPU this model runs on: cuda:N or N")

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str | None) -> str | None:
        return None if device is None else parse_device(device)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEEPSERVE_", extra="ignore")

    # A URI (s3://, gs://, https://, file://) in DEEPSERVE_MODEL_STORE or --store moves to
    # model_store_uri, and model_store becomes its local copy in store_cache (deepserve.remote_store)
    model_store: Path = Field(default=Path("model_store"), description="the model store to serve")
    model_store_uri: str | None = Field(default=None, description="where model_store is copied from")
    store_cache: Path = Field(
        default_factory=default_cache_root,
        description="where stores and sources in object storage are copied to (default "
        "$XDG_CACHE_HOME/deepserve/stores, else ~/.cache/deepserve/stores)",
    )
    # More stores served beside it (`deepserve serve SOURCE` puts the sources it imports in one); a
    # name in two stores is served from the first that holds it.
    extra_model_stores: list[Path] = Field(default_factory=list, description="more stores to serve")
    host: str = Field(default="127.0.0.1", description="bind address; set 0.0.0.0 to serve other hosts")
    http_port: int = Field(default=8000, ge=0, le=65535)
    grpc_port: int = Field(default=8001, ge=0, le=65535, description="0 disables the gRPC server")
    enable_grpc: bool = True
    # gRPC connections. Keepalive: the server pings an idle connection every keepalive_time_s and drops
    # it when no answer comes within keepalive_timeout_s, so a client that vanished (node lost, NAT
    # timeout) frees its streams. Max connection age: grpc clients keep one connection for ever, so
    # replicas an autoscaler adds get no traffic from existing clients until connections are recycled
    grpc_keepalive_time_s: float = Field(default=60.0, gt=0, description="ping an idle connection this often")
    grpc_keepalive_timeout_s: float = Field(default=20.0, gt=0, description="then drop it, unanswered")
    grpc_max_connection_age_s: float | None = Field(
        default=None, gt=0, description="GOAWAY to a connection this old (its client reconnects); None: never"
    )
    grpc_max_connection_age_grace_s: float = Field(
        default=30.0, ge=0, description="after that GOAWAY, the time its calls in flight have to finish"
    )

    # TLS for HTTP and gRPC both; off when neither file is set
    tls_certfile: Path | None = Field(default=None, description="PEM certificate chain (with tls_keyfile)")
    tls_keyfile: Path | None = Field(default=None, description="PEM private key of tls_certfile")
    tls_ca_certfile: Path | None = Field(
        default=None, description="PEM CA bundle: when set, clients must present a certificate it signed"
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
    gc_tuning: bool = Field(
        default=True,
        description="freeze the loaded models out of the garbage collector and collect young objects "
        "every 10,000 allocations instead of 700 (heap.py); false = Python's defaults",
    )
    inline_compute_ms: float = Field(
        default=0.3,
        ge=0,
        description="a built-in model whose batches take less than this runs on the event loop while it "
        "serves one request at a time (saves the thread hand-off; user code never does; see batching.py). "
        "0 = never",
    )
    codec_threads: int = Field(
        default=2, ge=1, description="threads for pre/post-processing that is too slow for the event loop"
    )
    codec_inline_us: float = Field(
        default=150.0,
        ge=0,
        description="pre/post-processing that has taken less than this on average runs on the event loop "
        "(a hand-off to a thread costs more); slower work (image decoding, tokenising) runs in the "
        "codec threads. 0 = always in the threads",
    )
    request_timeout_s: float = Field(default=30.0, gt=0, description="per-request deadline by default")
    drain_timeout_s: float = Field(default=30.0, ge=0, description="grace period for in-flight work")

    # generation engine
    max_running_sequences: int = Field(default=16, ge=1)
    max_waiting_sequences: int = Field(default=64, ge=1)
    prefill_chunk_tokens: int | None = Field(
        default=None,
        ge=1,
        description="prompt tokens prefilled per step while other sequences decode, so a long prompt "
        "cannot stall their streams (default: max_running_sequences); with none decoding a prompt "
        "is prefilled at once",
    )

    # runtimes
    device: Literal["auto", "cpu", "cuda"] = "auto"
    devices: str = Field(default="", description="GPUs to deal models over, e.g. cuda:0,cuda:1 or 0,1")
    threads: int | None = Field(default=None, ge=1, description="intra-op threads per model runtime")
    trt_cache_dir: Path | None = Field(
        default=None,
        description="TensorRT engine and timing caches (on GPUs with TensorRT); default "
        "~/.cache/deepserve/trt. A folder that cannot be written turns the cache off, not the model",
    )
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
    # TorchServe's management API (GET/POST/PUT/DELETE /models) on a port of its own, served only
    # with enable_management (and so behind the management token); 0 = not served
    management_port: int = Field(default=8081, ge=0, le=65535, description="TorchServe management API port")
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, description="larger bodies get 413")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = Field(
        default="text", description="text lines, or one JSON object a line for log collectors"
    )
    access_log: bool = Field(
        default=False,
        description="one log line a request (method, route, model, status, duration, request id); off by "
        "default: at thousands of requests a second the lines cost more than the requests",
    )

    # processes
    workers: int = Field(
        default=1,
        ge=1,
        description="server processes sharing the HTTP and gRPC ports (SO_REUSEPORT), each with its own "
        "event loop: for small models and many clients on a multi-core box; keep 1 for one big model on "
        "a GPU",
    )

    @model_validator(mode="before")
    @classmethod
    def _store_uri(cls, data: Any) -> Any:
        """A URI model_store is kept as a string: a Path would fold its "//" (s3:/bucket)."""
        if isinstance(data, dict) and isinstance(data.get("model_store"), str | PurePath):
            uri = store_uri(data["model_store"])
            if uri is not None:
                data = {k: v for k, v in data.items() if k != "model_store"} | {"model_store_uri": uri}
        return data

    @model_validator(mode="after")
    def _local_copy(self) -> Settings:
        if self.model_store_uri is not None:
            self.model_store = cache_dir(self.model_store_uri, self.store_cache)
        return self

    @field_validator("devices")
    @classmethod
    def _device_list(cls, devices: str) -> str:
        return ",".join(parse_devices(devices))

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

    @model_validator(mode="after")
    def _tls_files(self) -> Settings:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("TLS needs both DEEPSERVE_TLS_CERTFILE and DEEPSERVE_TLS_KEYFILE, or neither")
        if self.tls_ca_certfile is not None and self.tls_certfile is None:
            raise ValueError("DEEPSERVE_TLS_CA_CERTFILE (client certificates) needs the cert and key set too")
        for path in (self.tls_certfile, self.tls_keyfile, self.tls_ca_certfile):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file {path} does not exist or is not a file")
        return self

    @property
    def tls(self) -> bool:
        return self.tls_certfile is not None

    def resolved_device(self) -> str:
        """``auto`` becomes ``cuda`` when torch or ONNX Runtime sees a GPU, else ``cpu``."""
        if self.device != "auto":
            return self.device
        import onnxruntime  # the `serve` extra's, or the CUDA build from the `gpu` extra

        return "cuda" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "cpu"

    def override(self, name: str) -> ModelOverride:
        return self.models.get(name) or ModelOverride()
