"""``model.json``: what a model-store version holds, validated on write (export) and on read (server).

This schema is the contract between ``export/`` and ``service/`` + ``handlers/``: the server
needs nothing but this file and the graph files beside it.

``inputs`` / ``outputs`` describe the exported graph's own signature (KServe datatypes, -1 for
dynamic dims, batch first). Input preprocessing that is plain arithmetic (image / feature
normalisation, regression target scaling) is baked into the graphs, so a client sending a raw
tensor over KServe v2 gets the same answer as one sending a PNG or a named row through a
handler; ``preprocessing`` keeps what the handler still needs to *decode* requests (image size
and channels, feature names, tokenizer) and the statistics for the record.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# A model's directory name in the store, as export writes it and the server serves it: plain, so a
# name can never reach outside the store ("..", "/", URLs).
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def is_plain_model_name(name: str) -> bool:
    return bool(MODEL_NAME.match(name)) and ".." not in name

SCHEMA_VERSION = 1

# "raw": the graph's tensors in, its tensors out (an imported model with no task of ours).
Task = Literal["classification", "regression", "embedding", "text-generation", "image-generation", "raw"]
Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BF16", "BYTES",
]  # fmt: skip
# "transformers": a Hugging Face folder served by transformers itself (`deepserve import --runtime torch`)
Format = Literal["onnx", "torchscript", "pt2", "transformers"]
Precision = Literal["fp32", "fp16", "bf16", "int8"]
ClusterMetric = Literal["cosine", "euclidean"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    name: str
    datatype: Datatype
    shape: list[int] = Field(description="-1 marks a dynamic dimension; the first is the batch")
    # Triton's ModelInput.optional: a request may leave the input out. Written only when true, so
    # model.json files stay as they were (and readable by servers that predate the field).
    optional: bool = Field(default=False, exclude_if=lambda v: not v,
                           description="a request may leave this input out")  # fmt: skip


class ImagePreprocessing(_Strict):
    kind: Literal["image"] = "image"
    channels: int
    height: int
    width: int
    # Graph input is pixels scaled to [0, 1]; these stats are applied inside the graph.
    mean: list[float]
    std: list[float]


class TabularPreprocessing(_Strict):
    kind: Literal["tabular"] = "tabular"
    features: list[str]
    mean: list[float]
    std: list[float]
    targets: list[str] = Field(default_factory=list, description="regression target names")


class TextPreprocessing(_Strict):
    kind: Literal["text"] = "text"
    # "wordpiece" / "tokenizers": a tokenizers-library JSON file (any model: WordPiece, BPE, Unigram)
    # next to model.json; "wordpiece" is the name the first stores were written with.
    tokenizer: Literal["bytes", "wordpiece", "tokenizers"]
    tokenizer_file: str | None = None
    max_length: int
    pad_id: int = 0
    vocab_size: int


class LatentPreprocessing(_Strict):
    """Image generators: the graph takes a latent vector z ~ N(0, I)."""

    kind: Literal["latent"] = "latent"
    latent_dim: int


Preprocessing = Annotated[
    ImagePreprocessing | TabularPreprocessing | TextPreprocessing | LatentPreprocessing,
    Field(discriminator="kind"),
]


class GenerationDefaults(_Strict):
    # text generation
    context_length: int | None = None
    max_tokens: int = 64
    temperature: float = 0.8
    top_k: int | None = None
    top_p: float = 1.0
    # OpenAI's penalties where a request sends none (service/sampling.py): a small LM's own default
    # keeps its greedy output off a loop of one token
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    eos_id: int | None = None
    # KV-cache geometry for the explicit-cache graphs: past_key/past_value are
    # (n_layer, B, n_head, P, head_dim).
    n_layer: int | None = None
    n_head: int | None = None
    head_dim: int | None = None
    # image generation: graph output is (B, C, H, W) in [0, 1]
    image_channels: int | None = None
    image_height: int | None = None
    image_width: int | None = None

    def penalties(self, frequency: Any, presence: Any) -> tuple[float, float]:
        """(frequency, presence): what a request sent, these defaults where it sent none (None, a
        JSON null)."""
        return (
            self.frequency_penalty if frequency is None else float(frequency),
            self.presence_penalty if presence is None else float(presence),
        )


class HandlerRef(_Strict):
    """User code that serves this version: a file inside the version directory.

    ``python``: a class following deepserve's handler contract (docs/handlers.md);
    ``torchserve``: a TorchServe handler (built-in name or file) from a ``.mar``, run unchanged.
    """

    kind: Literal["python", "torchserve"]
    file: str = Field(description="path relative to the version directory, or a TorchServe built-in name")
    class_name: str | None = Field(default=None, description="class in ``file``; None: the one it defines")


class BatchingSpec(_Strict):
    """The model's own batching wishes (Triton's ``dynamic_batching``); server overrides win."""

    max_queue_delay_ms: float | None = Field(default=None, ge=0)
    preferred_batch_sizes: list[int] = Field(default_factory=list)


class ClusterSpec(_Strict):
    """k-means centroids over this version's embedding output, fitted by ``deepserve cluster``.

    ``cosine``: vectors are L2-normalised and the centroids are unit vectors (spherical k-means);
    distance = 1 - cosine similarity. ``euclidean``: raw vectors, distance = L2 distance.
    """

    file: str = Field(description="(k, D) float32 .npy file next to model.json")
    output: str = Field(description="the embedding output the centroids live in")
    k: int = Field(ge=2)
    metric: ClusterMetric
    silhouette: float = Field(description="mean silhouette of the fitted data at k, in the metric")
    ari: float | None = Field(default=None, description="adjusted Rand index against the data's labels")
    silhouette_by_k: dict[int, float] = Field(default_factory=dict, description="every k tried")
    fitted_on: str = Field(description="the data set (and its size) the centroids were fitted on")
    seed: int = 0


class Variant(_Strict):
    """One runnable file of this version and whether parity allows serving it."""

    file: str
    format: Format
    precision: Precision
    usable: bool
    reason: str | None = Field(default=None, description="why it is unusable, or which check could not run")


class ModelSpec(_Strict):
    schema_version: int = SCHEMA_VERSION
    name: str
    version: int
    task: Task
    architecture: str = Field(description="registered zoo name, or an imported model id")
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    # 0: the graph has no batch axis (a fixed first dimension, or Triton max_batch_size 0): each
    # request runs alone and ``shapes`` are the whole tensor.
    max_batch_size: int = Field(ge=0)
    labels: list[str] = Field(default_factory=list)
    preprocessing: Preprocessing | None = None
    generation: GenerationDefaults | None = None
    variants: list[Variant]
    metrics: dict[str, Any] = Field(default_factory=dict, description="the checkpoint's test metrics")
    data_fingerprint: str | None = None
    created: str
    torch_version: str
    source: str | None = Field(default=None, description="checkpoint file or upstream model id")
    # Written only when set, so the files of built-in models stay as they were.
    handler: HandlerRef | None = Field(default=None, exclude_if=lambda v: v is None,
                                       description="user code that serves it (imports)")  # fmt: skip
    # What `deepserve import` made it from (graph_file, hf, triton, mar, custom); None: our exporter.
    # An imported version has no checkpoint of ours to rebuild from, and no preprocessing of ours.
    imported_from: str | None = Field(default=None, exclude_if=lambda v: v is None)
    batching: BatchingSpec | None = Field(default=None, exclude_if=lambda v: v is None)
    clusters: ClusterSpec | None = Field(default=None, exclude_if=lambda v: v is None)

    @property
    def rebuildable(self) -> bool:
        """Whether the eager runtime can rebuild it from a training checkpoint (model.json ``source``)."""
        return self.imported_from is None and bool(self.source)

    @property
    def batched(self) -> bool:
        """Whether requests may share a run (the graph has a batch axis)."""
        return self.max_batch_size > 0

    def variant(self, fmt: Format, precision: Precision) -> Variant | None:
        return next((v for v in self.variants if v.format == fmt and v.precision == precision), None)

    @classmethod
    def read(cls, version_dir: Path) -> ModelSpec:
        return cls.model_validate_json((version_dir / "model.json").read_text(encoding="utf-8"))

    def write(self, version_dir: Path) -> None:
        (version_dir / "model.json").write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
