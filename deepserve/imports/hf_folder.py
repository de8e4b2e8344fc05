"""What a Hugging Face folder says about itself: task, labels, tokenizer files, lengths, generation defaults.

``read_folder`` runs before torch or transformers is imported, so a folder that cannot be served
(no tokenizer, no weights, code of its own) fails in a fraction of a second with one line saying
what to do. The task comes from ``--task`` or config.json ``architectures``::

    *ForSequenceClassification            classification (labels: id2label, --labels overrides)
    *ForCausalLM, *LMHeadModel            text-generation
    anything else (BertModel, a sentence-transformers folder)   embedding
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepserve.imports.base import ImportOptions, SourceError, read_labels

HF_TASKS = ("classification", "embedding", "text-generation")
# A tokenizer is one of these: the fast tokenizer's JSON, or a slow tokenizer's vocabulary files.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model")  # fmt: skip
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
MAX_LENGTH_CAP = 4096  # a longer window is rarely served on CPU; the ONNX graph's dims end here
# RoBERTa-style position tables start after the padding index: 514 rows serve 512 tokens.
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "longformer", "mpnet", "ibert"}


@dataclass(frozen=True)
class HFFolder:
    path: Path
    config: dict[str, Any]  # config.json as written
    task: str
    architecture: str
    labels: list[str]


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SourceError(
            f"{path} is not readable JSON ({exc}); save the folder again with save_pretrained"
        ) from exc
    if not isinstance(value, dict):
        raise SourceError(f"{path} is not a JSON object; save the folder again with save_pretrained")
    return value


def read_folder(source: Path, opts: ImportOptions) -> HFFolder:
    config = _json(source / "config.json")
    if "auto_map" in config:
        raise SourceError(f"{source} needs its own Python code (config.json auto_map); deepserve does not "
                          "run code from model folders: serve it with --handler FILE:CLASS")  # fmt: skip
    architecture = str((config.get("architectures") or [config.get("model_type") or "unknown"])[0])
    task = _task(architecture, opts.task)
    if not any((source / name).is_file() for name in TOKENIZER_FILES):
        raise SourceError(
            f"{source} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save it beside the model "
            "with tokenizer.save_pretrained(folder) and import again"
        )
    if not any(any(source.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        raise SourceError(f"{source} has no weights (model.safetensors or pytorch_model.bin); save the model "
                          "with model.save_pretrained(folder) and import again")  # fmt: skip
    labels = _labels(config, opts.labels) if task == "classification" else []
    return HFFolder(source, config, task, architecture, labels)


def _task(architecture: str, requested: str | None) -> str:
    if requested is not None:
        if requested not in HF_TASKS:
            raise SourceError(
                f"--task {requested} is not one a Hugging Face folder is imported as "
                f"({', '.join(HF_TASKS)}); export it to ONNX and import the .onnx file"
            )
        return requested
    if architecture.endswith("ForSequenceClassification"):
        return "classification"
    if architecture.endswith(("ForCausalLM", "LMHeadModel")):
        return "text-generation"
    return "embedding"


def _labels(config: dict[str, Any], labels_file: Path | None) -> list[str]:
    problem = config.get("problem_type")
    if problem in ("multi_label_classification", "regression"):  # sigmoid / raw scores, not a softmax
        raise SourceError(
            f"config.json problem_type {problem!r}: deepserve serves softmax classifiers from Hugging Face "
            "folders; export it to ONNX and import the .onnx file with --task raw"
        )
    id2label = config.get("id2label") or {}
    count = int(config.get("num_labels") or len(id2label) or 2)
    if labels_file is not None:
        labels = read_labels(labels_file)
        if len(labels) != count:
            raise SourceError(f"--labels {labels_file} has {len(labels)} labels but the model has {count} "
                              "classes; write one label per class, in class order")  # fmt: skip
        return labels
    return [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(count)]


def max_length(folder: Path, config: Any, window: int | None = None) -> int:
    """The longest input the model takes: its position table, the tokenizer's model_max_length, a
    sentence-transformers max_seq_length and its sliding attention ``window``, whichever is smallest
    (at most MAX_LENGTH_CAP)."""
    limits = [MAX_LENGTH_CAP]
    if window is not None:
        limits.append(window)
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        offset = int(config.pad_token_id or 0) + 1 if config.model_type in _OFFSET_POSITIONS else 0
        limits.append(positions - offset)
    tokenizer_max = _json(folder / "tokenizer_config.json").get("model_max_length")
    if isinstance(tokenizer_max, int | float) and 0 < tokenizer_max < 10**6:  # 1e30 means "not set"
        limits.append(int(tokenizer_max))
    st_max = _json(folder / "sentence_bert_config.json").get("max_seq_length")
    if isinstance(st_max, int) and st_max > 0:
        limits.append(st_max)
    return min(limits)


def text_config(config: Any) -> Any:
    """A multimodal config's text model config; the config itself otherwise."""
    return config.get_text_config() if callable(getattr(config, "get_text_config", None)) else config


def attention_window(config: Any) -> int | None:
    """How many positions a sliding-window layer attends to (Mistral, Gemma 2/3, Qwen2 with
    ``use_sliding_window``), or None when every layer sees the whole context.

    A causal LM's served sequences stop at the window, where sliding and full attention are the same,
    and its window is widened past them (``hf_modules.full_attention``): a shorter context, never a
    wrong one. A multimodal config's window is its text model's.
    """
    text = text_config(config)
    window = getattr(text, "sliding_window", None)
    if not isinstance(window, int) or isinstance(window, bool) or window <= 0:
        return None
    layer_types = getattr(text, "layer_types", None)
    if isinstance(layer_types, list | tuple):  # per layer, in recent transformers configs
        return window if "sliding_attention" in layer_types else None
    return None if getattr(text, "use_sliding_window", True) is False else window


def eos_id(folder: Path, config: Any) -> int | None:
    """The end-of-text id generation stops at (the first, where the model lists several)."""
    value = _json(folder / "generation_config.json").get(
        "eos_token_id", getattr(config, "eos_token_id", None)
    )
    if isinstance(value, list):
        value = value[0] if value else None
    return int(value) if isinstance(value, int) else None


def generation_defaults(folder: Path) -> dict[str, Any]:
    """Sampling defaults the folder's generation_config.json sets explicitly (the rest: deepserve's)."""
    gen = _json(folder / "generation_config.json")
    out: dict[str, Any] = {}
    if gen.get("do_sample") is False:
        out["temperature"] = 0.0
    elif isinstance(gen.get("temperature"), int | float):
        out["temperature"] = float(gen["temperature"])
    if isinstance(gen.get("top_k"), int) and gen["top_k"] > 0:
        out["top_k"] = gen["top_k"]
    if isinstance(gen.get("top_p"), int | float) and 0 < gen["top_p"] <= 1:
        out["top_p"] = float(gen["top_p"])
    if isinstance(gen.get("max_new_tokens"), int) and gen["max_new_tokens"] > 0:
        out["max_tokens"] = gen["max_new_tokens"]
    return out
