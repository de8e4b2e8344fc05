"""Chat messages -> the prompt text a model was trained on.

A model whose tokenizer carries a chat template (Hugging Face ``tokenizer_config.json``
``chat_template``, or a ``chat_template.jinja`` file, in the version folder or its ``hf/`` folder)
gets its messages rendered by that template, as ``transformers``' ``apply_chat_template(...,
add_generation_prompt=True)`` does. Templates come from model folders, so they are untrusted code:
they run in Jinja's immutable sandbox, with the helpers Hugging Face templates call
(``raise_exception``, ``strftime_now``, a ``tojson`` that keeps non-ASCII).

Every other model (the zoo GPTs are plain language models, trained without a chat template) gets the
plain template: the messages' texts, tool messages left out, joined by newlines, with no role names.
"""

from __future__ import annotations

import datetime
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepserve.service.errors import InternalError, InvalidRequestError

_CONFIG, _JINJA = "tokenizer_config.json", "chat_template.jinja"


@dataclass(frozen=True)
class ChatTemplate:
    source: str  # the Jinja text
    bos_token: str = ""
    eos_token: str = ""

    def render(self, messages: list[dict[str, Any]]) -> str:
        """The prompt for ``messages`` ({"role", "content"} dicts), ending in the assistant's turn."""
        import jinja2

        try:
            text = _compiled(self.source).render(
                messages=messages, add_generation_prompt=True, bos_token=self.bos_token,
                eos_token=self.eos_token,
            )  # fmt: skip
        except jinja2.TemplateError as exc:  # the template's own refusals (roles must alternate, ...)
            raise InvalidRequestError(f"the model's chat template refused these messages: {exc}") from None
        return str(text)


def plain_prompt(messages: list[dict[str, Any]]) -> str:
    """The plain template: the texts of all but tool messages, one per line."""
    return "\n".join(m["content"] for m in messages if m["role"] != "tool")


def format_chat(messages: list[dict[str, Any]], version_dir: Path | None) -> str:
    """The model's own chat template when its folder has one, else the plain template."""
    template = load_chat_template(version_dir) if version_dir is not None else None
    return template.render(messages) if template is not None else plain_prompt(messages)


@functools.lru_cache(maxsize=64)
def load_chat_template(version_dir: Path) -> ChatTemplate | None:
    """The chat template of the model in ``version_dir`` (read once per folder), or None."""
    for folder in (version_dir, version_dir / "hf"):
        config = _read_config(folder / _CONFIG)
        source = _template_text(config.get("chat_template"))
        if source is None and (folder / _JINJA).is_file():
            source = (folder / _JINJA).read_text(encoding="utf-8")
        if source:
            return ChatTemplate(
                source, _token_text(config.get("bos_token")), _token_text(config.get("eos_token"))
            )
    return None


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # an unreadable config is no template; the model still serves with the plain one
    return config if isinstance(config, dict) else {}


def _template_text(value: Any) -> str | None:
    """``chat_template``: one string, or a list of named templates (the "default" one is used)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        chosen = named.get("default")
        return chosen if isinstance(chosen, str) else None
    return None


def _token_text(value: Any) -> str:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else ""


@functools.lru_cache(maxsize=64)
def _compiled(source: str) -> Any:
    """The template compiled in a sandbox that cannot change the objects it is given."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    def tojson(value: Any, indent: int | None = None, **_: Any) -> str:
        return json.dumps(value, ensure_ascii=False, indent=indent)

    def strftime_now(fmt: str) -> str:
        return datetime.datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now)
    try:
        return env.from_string(source)
    except TemplateError as exc:
        raise InternalError(
            f"the model's chat template does not compile: {exc}; fix its tokenizer_config.json"
        ) from None
