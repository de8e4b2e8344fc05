"""A model's layer groups, bottom (input side) to top (the head): the unit of gradient-norm reports,
of freezing, of differential learning rates and of gradual unfreezing.

A group is a top-level child module; a list of blocks (``nn.ModuleList`` / ``nn.Sequential`` whose
parameterised children are themselves composite, e.g. a ResNet's stages or a transformer's
layers) gives one group per block. Registration order is the data's order through the zoo's
models, so the last group is the head (``fc``, ``head``, ``lm_head``...). Parameters shared
between modules (the GPT's tied embedding) belong to the first group that holds them.
"""

from __future__ import annotations

from torch import nn


def _is_block_list(module: nn.Module) -> bool:
    if not isinstance(module, nn.ModuleList | nn.Sequential):
        return False
    with_params = [m for m in module.children() if any(True for _ in m.parameters())]
    return bool(with_params) and all(any(True for _ in m.children()) for m in with_params)


def layer_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) per group, bottom to top; modules without parameters are left out."""
    out: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        if _is_block_list(child):
            out += [(f"{name}.{i}", block) for i, block in child.named_children()]
        else:
            out.append((name, child))
    return [(n, m) for n, m in out if any(True for _ in m.parameters())]


def layer_groups(model: nn.Module) -> list[tuple[str, list[nn.Parameter]]]:
    """(name, parameters) per group, bottom to top, each parameter in exactly one group.

    Parameters registered on the model itself (a ViT's ``cls_token``) form a group ``"params"``
    placed first: they sit at the input side in every zoo model that has them.
    """
    seen: set[int] = set()
    groups: list[tuple[str, list[nn.Parameter]]] = []
    own = [p for p in model.parameters(recurse=False)]
    candidates = [("params", own)] if own else []
    candidates += [(name, list(module.parameters())) for name, module in layer_modules(model)]
    for name, params in candidates:
        fresh = [p for p in params if id(p) not in seen]
        seen.update(id(p) for p in fresh)
        if fresh:
            groups.append((name, fresh))
    return groups
