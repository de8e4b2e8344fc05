"""``export_checkpoint``: a checkpoint -> one or two complete, parity-checked model-store versions.

For each graph plan (planners.py) every variant file is written into a staged temp directory,
checked (onnx.checker + ORT load), and measured against the eager fp32 model on held-out inputs.
An fp32 miss raises ``ParityError`` and the staged directory disappears; lower precisions that
miss are kept but marked unusable in model.json.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from deepserve.export.errors import ExportError, UnknownModelError
from deepserve.export.generative_plans import plan_generator, plan_gpt, plan_vae
from deepserve.export.greedy import greedy_check
from deepserve.export.onnx_graph import ort_session
from deepserve.export.parity import measure, ort_runner, torch_runner
from deepserve.export.plan import GraphPlan
from deepserve.export.planners import plan_image, plan_tabular, plan_text
from deepserve.export.variants import VariantResult, write_parity
from deepserve.export.writers import Step, steps
from deepserve.handlers.kv_contract import IN_PLACE
from deepserve.store import GenerationDefaults, ModelSpec, Variant, is_plain_model_name
from deepserve.training.checkpoint import Checkpoint, load_checkpoint
from deepserve.version_dir import resolve_version, staged_version


def read_checkpoint(path: Path) -> Checkpoint:
    """``load_checkpoint``, also accepting meta["torch_version"] saved as torch's TorchVersion (a str
    subclass that save_checkpoint currently writes and weights_only loading refuses)."""
    with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
        return load_checkpoint(path)


def plan_checkpoint(ckpt: Checkpoint) -> list[GraphPlan]:
    """The store models a checkpoint becomes, chosen by task, preprocessing kind and model entry points."""
    try:
        model = ckpt.build()
    except KeyError as exc:  # build_model's unknown-name error
        raise UnknownModelError(f"cannot export: {exc.args[0]}") from None
    prep: dict[str, Any] = dict(ckpt.meta.get("preprocessing") or {})
    kind, task = prep.get("kind"), ckpt.task
    if task == "text-generation" and hasattr(model, "forward_cached"):
        return [plan_gpt(ckpt, model, prep)]
    if task == "embedding" and kind == "image" and hasattr(model, "decode"):
        return plan_vae(ckpt, model, prep)
    if task == "image-generation" and kind == "latent":
        return [plan_generator(ckpt, model, prep)]
    if kind == "image" and task == "classification":
        return [plan_image(ckpt, model, prep)]
    if kind == "tabular" and task in ("classification", "regression"):
        return [plan_tabular(ckpt, model, prep)]
    if kind == "text" and task in ("classification", "embedding"):
        return [plan_text(ckpt, model, prep)]
    raise UnknownModelError(
        f"no export recipe for model {ckpt.model_name!r} with task {task!r} and preprocessing {kind!r}; "
        "supported: image/tabular/text classification, regression, text/image embedding, "
        "text generation (GPT with KV cache), image generation"
    )


def _run_step(plan: GraphPlan, step: Step, tmp: Path) -> VariantResult:
    start = time.perf_counter()
    step.write(plan, tmp / step.file)
    result = VariantResult(step.file, step.format, step.precision, seconds=time.perf_counter() - start)
    reference = torch_runner(plan.module, plan.input_names, plan.output_names)
    classifiers = {plan.output_names[0]} if plan.classifier else set()
    result.checks = measure(
        step.load(plan, tmp / step.file), reference, plan.batches, classifier_outputs=classifiers
    )
    result.raise_if_fp32_fails()
    return result


def _greedy(plan: GraphPlan, tmp: Path, result: VariantResult) -> None:
    assert plan.greedy is not None and plan.generation is not None
    prompts, new_tokens = plan.greedy
    g = plan.generation
    cache = (int(g["n_layer"]), int(g["n_head"]), int(g["head_dim"]))
    step = ort_runner(ort_session(tmp / result.file, fp16=result.precision == "fp16"))
    result.extra |= greedy_check(step, plan.module.gpt, prompts, new_tokens, cache, contract=IN_PLACE)  # type: ignore[arg-type]
    result.raise_if_fp32_fails()


def export_plan(plan: GraphPlan, tmp: Path, *, skip_slow: bool = False) -> list[VariantResult]:
    """Write and check every variant of one plan into ``tmp``; fp32 failures raise ParityError."""
    results = []
    for step in steps(plan):
        if skip_slow and step.slow:
            continue
        result = _run_step(plan, step, tmp)
        if plan.greedy is not None and step.format == "onnx" and step.precision == "fp32":
            _greedy(plan, tmp, result)
        results.append(result)
    return results


def _filtered(model_cls: Any, values: dict[str, Any]) -> dict[str, Any]:
    """Keep only the fields the schema knows (meta may carry more, e.g. target stats baked in the graph)."""
    return {k: v for k, v in values.items() if k in model_cls.model_fields}


def _preprocessing(plan: GraphPlan, ckpt: Checkpoint) -> dict[str, Any] | None:
    from deepserve import store as schema

    prep = plan.preprocessing if plan.preprocessing is not None else ckpt.meta.get("preprocessing")
    if not prep:
        return None
    classes = {
        "image": schema.ImagePreprocessing,
        "tabular": schema.TabularPreprocessing,
        "text": schema.TextPreprocessing,
        "latent": schema.LatentPreprocessing,
    }
    return _filtered(classes[prep["kind"]], dict(prep))


def build_spec(
    plan: GraphPlan, ckpt: Checkpoint, name: str, version: int, variants: list[Variant], source: str
) -> ModelSpec:
    generation = plan.generation if plan.generation is not None else ckpt.meta.get("generation")
    return ModelSpec.model_validate(
        {
            "name": name,
            "version": version,
            "task": plan.task,
            "architecture": ckpt.model_name,
            "inputs": plan.inputs,
            "outputs": plan.outputs,
            "max_batch_size": plan.max_batch_size,
            "labels": plan.labels if plan.classifier else [],
            "preprocessing": _preprocessing(plan, ckpt),
            "generation": _filtered(GenerationDefaults, generation) if generation else None,
            "variants": variants,
            "metrics": dict(ckpt.meta.get("metrics") or {}),
            "data_fingerprint": ckpt.meta.get("data_fingerprint"),
            "created": datetime.now(UTC).isoformat(),
            "torch_version": torch.__version__,
            "source": source,
        }
    )


def write_assets(plan: GraphPlan, tmp: Path) -> None:
    """The plan's extra files (a tokenizer.json, categories.json), plain names only."""
    for name, text in plan.assets.items():
        reserved = name.startswith("model.") or name == "parity.json"
        if not is_plain_model_name(name) or reserved:
            raise ExportError(f"checkpoint asset {name!r} is not a plain file name export may write")
        (tmp / name).write_text(text, encoding="utf-8")


def write_version(
    plan: GraphPlan,
    ckpt: Checkpoint,
    tmp: Path,
    name: str,
    version: int,
    *,
    source: str,
    skip_slow: bool = False,
) -> None:
    write_assets(plan, tmp)
    results = export_plan(plan, tmp, skip_slow=skip_slow)
    built = {r.file for r in results}
    not_built = [s.file for s in steps(plan) if s.file not in built]
    write_parity(
        tmp,
        results,
        reference="eager fp32 PyTorch (the serving module rebuilt from the checkpoint)",
        inputs=plan.inputs_from,
        batch_sizes=sorted({int(next(iter(b.values())).shape[0]) for b in plan.batches}),
        not_built={f: "skipped by the quick store build" for f in not_built},
    )
    build_spec(plan, ckpt, name, version, [r.to_variant() for r in results], source).write(tmp)
    ModelSpec.read(tmp)  # validates what was written


def export_checkpoint(
    checkpoint: Path,
    store: Path,
    *,
    name: str | None = None,
    version: int | None = None,
    force: bool = False,
    mar: bool = False,
    skip_slow: bool = False,
) -> list[Path]:
    """Export ``checkpoint`` into ``store``; returns the version dirs written (two for a VAE)."""
    from contextlib import ExitStack

    ckpt = read_checkpoint(checkpoint)
    base = name or str(ckpt.meta.get("recipe") or "") or ckpt.model_name
    if base == "custom":  # the user's own data: named after it (houses.csv -> houses)
        base = str(ckpt.meta.get("name") or ckpt.model_name)
    if not is_plain_model_name(base):
        raise ExportError(
            f"model name {base!r} is not a plain model-store name (letters, digits, '.', '_', '-'; "
            "no paths); pass --name"
        )
    store = Path(store)
    plans = plan_checkpoint(ckpt)
    targets = [(p, base + p.suffix) for p in plans]
    versions = [resolve_version(store / n, version, force=force) for _, n in targets]
    with ExitStack() as stack:  # every plan staged; all renamed only if all succeed
        for (plan, model_name), v in zip(targets, versions, strict=True):
            tmp = stack.enter_context(staged_version(store, model_name, v))
            write_version(
                plan, ckpt, tmp, model_name, v, source=str(Path(checkpoint).resolve()), skip_slow=skip_slow
            )
    written = [store / n / str(v) for (_, n), v in zip(targets, versions, strict=True)]
    if mar:
        from deepserve.export.mar import build_mar

        for path in written:
            build_mar(path)
    return written
