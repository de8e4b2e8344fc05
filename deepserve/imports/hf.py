"""Import a local Hugging Face folder (config.json + weights + tokenizer files): never a download.

    deepserve import ./my-bert-classifier                 # ONNX (+fp16), parity against transformers
    deepserve import ./my-gpt2 --runtime torch            # the folder itself, run by transformers

Task (``hf_folder``): classification (softmax over the head's logits, labels from id2label),
embedding (pooled ``sentence_embedding``; a sentence-transformers folder's pooling and Normalize
are honoured, the request parameter ``normalize`` L2-normalises otherwise), or text-generation
(the explicit-KV-cache step graph the generation engine batches continuously).

``--runtime onnx`` (default) exports the modules of ``hf_modules`` to ONNX and measures them
against transformers (``hf_export``; parity.json); ``--runtime torch`` copies the folder into the
version as ``hf/`` (a symlink when serving in place) with a ``transformers`` variant that the
server runs through the same modules. The tokenizer is always written as ``tokenizer.json``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from deepserve.imports.base import ImportOptions, SourceError, place, spec_fields, write_version
from deepserve.imports.hf_folder import HFFolder, eos_id, generation_defaults, max_length, read_folder
from deepserve.store import GenerationDefaults, ModelSpec, TensorSpec, TextPreprocessing, Variant

log = logging.getLogger(__name__)

HF_DIR = "hf"
RUNTIMES = ("onnx", "torch")
# Files of other frameworks a copied folder does not need (transformers reads safetensors / .bin).
_NOT_COPIED = ("*.msgpack", "*.h5", "*.ot", "*.onnx", "onnx", "openvino", "coreml", ".git", ".cache")


def import_hf_folder(source: Path, opts: ImportOptions) -> list[Path]:
    """Write one store version for the folder ``source``; the version directory written."""
    opts = opts.named(source.resolve().name)
    runtime = opts.runtime or "onnx"
    if runtime not in RUNTIMES:
        raise SourceError(f"--runtime {runtime} is not one of {', '.join(RUNTIMES)}")
    folder = read_folder(source, opts)  # cheap checks first: no torch imported yet
    _require_transformers()
    return [write_version(opts, lambda tmp, version: _fill(folder, opts, runtime, tmp, version))]


def _require_transformers() -> None:
    import importlib.util

    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
        raise SourceError("importing a Hugging Face folder needs torch and transformers: "
                          "pip install 'deepserve[hf]'")  # fmt: skip


def _fill(folder: HFFolder, opts: ImportOptions, runtime: str, tmp: Path, version: int) -> ModelSpec:
    from deepserve.handlers.tokenizer import TokenizersTokenizer
    from deepserve.imports.hf_modules import FolderError, load_module
    from deepserve.imports.hf_tokenizer import write_tokenizer

    try:
        module = load_module(folder.path, folder.task)
    except FolderError as exc:
        raise SourceError(str(exc)) from exc
    except (OSError, ValueError, KeyError) as exc:
        raise SourceError(f"transformers cannot load {folder.path} as a {folder.task} model: "
                          f"{_line(exc)}") from exc  # fmt: skip
    config = _config(module)
    window = module.attention_window
    length = max_length(folder.path, config, window)
    if window == length:
        log.warning("%s attends through a sliding window of %d positions: it is served up to %d tokens, "
                    "where the exported graph is the model", folder.path.name, length, length)  # fmt: skip
    written = write_tokenizer(folder.path, tmp / "tokenizer.json", max_length=length,
                              pad_fallback=getattr(config, "pad_token_id", None))  # fmt: skip
    tokenizer = TokenizersTokenizer(written.file, length)
    io = _signature(folder, module, config, tokenizer)
    if runtime == "torch":
        _copy_folder(folder.path, tmp / HF_DIR, link=opts.link)
        variants = [Variant(file=HF_DIR, format="transformers", precision="fp32", usable=True)]
        metrics: dict[str, Any] = {}
    else:
        variants, metrics = _export(folder, module, config, tmp, tokenizer, written.pad_id, length, io)
        _keep_chat_template(folder.path, tmp)
    pre = TextPreprocessing(tokenizer="tokenizers", tokenizer_file="tokenizer.json", max_length=length,
                            pad_id=written.pad_id, vocab_size=int(config.vocab_size))  # fmt: skip
    generation = _generation(folder, config, length) if folder.task == "text-generation" else None
    return ModelSpec(**spec_fields(
        opts, version, folder.path.resolve(), task=folder.task, architecture=folder.architecture,
        inputs=io[0], outputs=io[1], max_batch_size=16 if generation else 32, labels=folder.labels,
        preprocessing=pre, generation=generation, variants=variants, metrics=metrics,
    ))  # fmt: skip


def _config(module: Any) -> Any:
    inner = getattr(module, "model", None) or getattr(module, "lm", None) or module.encoder
    return inner.config


def _signature(
    folder: HFFolder, module: Any, config: Any, tokenizer: Any
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The graph's inputs and outputs (the same for the ONNX file and the transformers folder)."""
    text_in = [TensorSpec(name=n, datatype="INT64", shape=[-1, -1]) for n in ("input_ids", "attention_mask")]
    if folder.task == "classification":
        return text_in, [TensorSpec(name="logits", datatype="FP32", shape=[-1, len(folder.labels)])]
    if folder.task == "embedding":
        import torch

        ids = torch.tensor([tokenizer.encode("dimension probe")])
        with torch.no_grad():
            dim = int(module(ids, torch.ones_like(ids)).shape[-1])
        return text_in, [TensorSpec(name="sentence_embedding", datatype="FP32", shape=[-1, dim])]
    from deepserve.imports.hf_export import step_signature

    return step_signature(config)  # the in-place KV-cache contract, as the zoo GPT's


def _generation(folder: HFFolder, config: Any, context: int) -> GenerationDefaults:
    from deepserve.imports.hf_modules import cache_geometry

    L, H, Dh = cache_geometry(config)
    return GenerationDefaults(context_length=context, eos_id=eos_id(folder.path, config), n_layer=L, n_head=H,
                              head_dim=Dh, **generation_defaults(folder.path))  # fmt: skip


def _export(
    folder: HFFolder, module: Any, config: Any, tmp: Path, tokenizer: Any, pad_id: int, length: int,
    io: tuple[list[TensorSpec], list[TensorSpec]],
) -> tuple[list[Variant], dict[str, Any]]:  # fmt: skip
    from deepserve.export.errors import ParityError
    from deepserve.export.variants import write_parity
    from deepserve.imports import hf_export
    from deepserve.imports.hf_tokenizer import SAMPLE_TEXTS

    if folder.task == "text-generation":
        from deepserve.imports.hf_modules import cache_geometry

        results = hf_export.export_causal_step(
            module,
            tmp,
            tokenizer=tokenizer,
            context=length,
            geometry=cache_geometry(config),
            vocab=int(config.vocab_size),
        )
    else:
        results = hf_export.export_encoder(
            module,
            tmp,
            output=io[1][0].name,
            tokenizer=tokenizer,
            pad_id=pad_id,
            classifier=folder.task == "classification",
            max_length=length,
        )
    try:
        results[0].raise_if_fp32_fails()
    except ParityError as exc:
        raise SourceError(
            f"{exc}; nothing was imported (try --runtime torch to serve transformers itself)"
        ) from exc
    write_parity(tmp, results, reference=f"transformers {folder.architecture} (fp32, torch eager)",
                 inputs=f"{len(SAMPLE_TEXTS)} sample texts, tokenised with tokenizer.json",
                 source=str(folder.path.resolve()))  # fmt: skip
    worst = max(c["rel"] for c in results[0].checks)
    return [r.to_variant() for r in results], {"max_rel_error_vs_transformers": worst}


def _keep_chat_template(src: Path, dst: Path) -> None:
    """The files that carry the model's chat template, beside the exported graph: the chat route
    formats conversations with it (``service.chat_template``) as the model was trained to read them."""
    for name in ("tokenizer_config.json", "chat_template.jinja"):
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def _copy_folder(src: Path, dst: Path, *, link: bool) -> None:
    """The folder as the version's ``hf/``: a symlink when serving in place, else a copy without the
    other frameworks' weight files."""
    if link:
        place(src, dst, link=True)
    else:
        shutil.copytree(src, dst, symlinks=False, ignore=shutil.ignore_patterns(*_NOT_COPIED))


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
