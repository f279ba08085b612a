"""Chat templates: Jinja templates that turn a list of messages into one prompt string.

Rendered the way transformers' ``apply_chat_template`` does (sandboxed Jinja, ``messages``,
``add_generation_prompt``, ``bos_token``, ``eos_token``, ``raise_exception``), so a template
behaves the same here, in an exported tokenizer, and in any HF-based server.
"""

from typing import Dict, List, Optional

# ChatML (Qwen, many open models), used when a tokenizer brings no template of its own.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
BUILTIN = {"chatml": CHATML}


def render_chat(template: str, messages: List[Dict[str, str]], add_generation_prompt: bool = True,
                bos_token: Optional[str] = "", eos_token: Optional[str] = "") -> str:
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                            bos_token=bos_token or "", eos_token=eos_token or "")


def load_template(spec: str) -> str:
    """A built-in name ('chatml') or a file holding a Jinja template."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    with open(spec, encoding="utf-8") as f:
        return f.read()
