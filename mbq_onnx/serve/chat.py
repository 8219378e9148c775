"""The model's chat template (``chat_template.jinja`` or ``tokenizer_config.json``'s ``chat_template``),
rendered the way transformers does: a sandboxed Jinja2 environment with ``trim_blocks``/``lstrip_blocks``."""

from __future__ import annotations

import json
from pathlib import Path

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    """The model has no chat template, or rendering the messages failed."""


def _raise(message: str) -> None:
    raise ChatTemplateError(message)


class ChatTemplate:
    """Renders OpenAI-style ``messages`` into the prompt text the model was tuned on."""

    def __init__(self, source: str, special_tokens: dict[str, str]):
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        self.template = env.from_string(source)
        self.special_tokens = special_tokens

    @classmethod
    def from_model_dir(cls, model_dir: Path) -> ChatTemplate | None:
        """The dir's template, or None if it has none."""
        config_path = model_dir / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        source = config.get("chat_template")
        jinja = model_dir / "chat_template.jinja"
        if jinja.is_file():
            source = jinja.read_text()
        if not isinstance(source, str):
            return None
        specials = {}
        for name in ("bos_token", "eos_token"):
            tok = config.get(name)
            tok = tok.get("content") if isinstance(tok, dict) else tok
            if isinstance(tok, str):
                specials[name] = tok
        return cls(source, specials)

    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt for ``messages`` followed by the assistant's turn (``add_generation_prompt``)."""
        try:
            return self.template.render(messages=messages, add_generation_prompt=True, **self.special_tokens)
        except TemplateError as e:
            raise ChatTemplateError(f"the chat template failed on these messages: {e}") from e
