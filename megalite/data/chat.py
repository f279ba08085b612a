"""Chat templates: Jinja templates that turn a list of messages into one prompt string, and the
token ids of a conversation with a mask of the tokens that carry the SFT loss.

Rendered the way transformers' ``apply_chat_template`` does (sandboxed Jinja with ``trim_blocks``
and ``lstrip_blocks``, ``messages``, ``add_generation_prompt``, ``tools``/``documents`` = None, the
tokenizer's special tokens such as ``bos_token``/``eos_token``, ``raise_exception``, ``tojson``,
``strftime_now``, loop controls and a pass-through ``{% generation %}`` tag), so a template behaves
the same here, in an exported tokenizer, and in any HF-based server. Tokenizing the rendered text
without adding special tokens gives the ids ``apply_chat_template(..., tokenize=True)`` gives.

Built-in templates follow the published formats of the model families they are named after.
"""

import functools
import json
from datetime import datetime
from typing import Dict, List, Optional, Sequence, Tuple

import jinja2
import jinja2.ext
import numpy as np
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from megalite.errors import MegaliteError

# ChatML (Qwen, many open models), used when a tokenizer brings no template of its own.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Qwen2 / Qwen2.5 instruct: ChatML with a default system prompt when none is given.
QWEN = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Meta Llama-3 instruct: header ids around the role, <|eot_id|> ends every turn, contents trimmed.
LLAMA3 = (
    "{% set loop_messages = messages %}"
    "{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

_ALTERNATE = ("{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
              "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
              "{% endif %}")
_SPLIT_SYSTEM = ("{% if messages[0]['role'] == 'system' %}"
                 "{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
                 "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}")

# Meta Llama-2 chat: <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {answer} </s>
LLAMA2 = (
    _SPLIT_SYSTEM
    + "{% for message in loop_messages %}" + _ALTERNATE
    + "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}"
    "{% endif %}"
    "{% endfor %}"
)

# Mistral instruct (v0.2/v0.3 spacing): <s>[INST] {user}[/INST] {answer}</s>; a system prompt goes
# before the first user message, separated by a blank line (so earlier turns never change).
MISTRAL = (
    _SPLIT_SYSTEM
    + "{{ bos_token }}"
    "{% for message in loop_messages %}" + _ALTERNATE
    + "{% if message['role'] == 'user' %}"
    "{% if loop.first and system_message != false %}"
    "{{ '[INST] ' + system_message + '\\n\\n' + message['content'] + '[/INST]' }}"
    "{% else %}{{ '[INST] ' + message['content'] + '[/INST]' }}{% endif %}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}"
    "{% endfor %}"
)

# Stanford Alpaca prompt (as LLaMA-Factory's "alpaca" template, multi-turn by repetition).
ALPACA = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}"
    "{% set system_message = 'Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.' %}{% endif %}"
    "{{ bos_token }}{% if system_message %}{{ system_message + '\\n\\n' }}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '### Response:\\n' + message['content'] + eos_token + '\\n\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
)

# The contents back to back; each assistant turn ends with eos so the model learns to stop.
PLAIN = (
    "{% for message in messages %}{{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
)

BUILTIN = {"chatml": CHATML, "qwen": QWEN, "llama3": LLAMA3, "llama2": LLAMA2, "mistral": MISTRAL,
           "alpaca": ALPACA, "plain": PLAIN}


@functools.lru_cache(maxsize=32)
def _compile(template: str):
    class GenerationTag(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}`` (transformers' assistant marker) renders its body."""
        tags = {"generation"}

        def parse(self, parser):
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def render_chat(template: str, messages: List[Dict[str, str]], add_generation_prompt: bool = True,
                bos_token: Optional[str] = "", eos_token: Optional[str] = "", **special_tokens) -> str:
    """The prompt text; ``special_tokens`` are further template variables (``pad_token``, ...)."""
    messages = [{k: v for k, v in m.items() if v is not None} for m in messages]
    return _compile(template).render(messages=messages, add_generation_prompt=add_generation_prompt, tools=None,
                                     documents=None, bos_token=bos_token or "", eos_token=eos_token or "",
                                     **special_tokens)


def load_template(spec: str) -> str:
    """A built-in name (``chatml``, ``qwen``, ``llama3``, ...), a file holding a Jinja template,
    or the template itself (as a run's settings store it)."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    if "{{" in spec or "{%" in spec:
        return spec
    try:
        with open(spec, encoding="utf-8") as f:
            return f.read()
    except OSError:
        raise MegaliteError(f"--chat-template {spec!r}: neither a built-in template "
                            f"({', '.join(BUILTIN)}) nor a readable file") from None


def resolve_template(spec: Optional[str], tokenizer) -> str:
    """``spec`` if given, else the tokenizer's own template, else ChatML."""
    if spec:
        return load_template(spec)
    return getattr(tokenizer, "chat_template", None) or CHATML


def chat_template_for(override: Optional[str], trained: Optional[str], tokenizer) -> str:
    """What decoding chats with (tools/generate.py --chat, the server): ``override`` (a
    --chat-template) if given, else the template a fine-tuning run stored, else the tokenizer's."""
    template = load_template(override) if override else trained or getattr(tokenizer, "chat_template", None)
    if template is None:
        raise MegaliteError("the tokenizer has no chat template; pass --chat-template chatml (or a file)")
    return template


def turn_end_strings(template: str) -> List[str]:
    """Strings that end an assistant turn of ``template`` and so stop decoding (ChatML's
    <|im_end|>, which is not the tokenizer's end-of-document token)."""
    return ["<|im_end|>"] if "<|im_end|>" in template else []


def assistant_spans(template: str, messages: List[Dict[str, str]], **tokens) -> Tuple[str, List[Tuple[int, int]]]:
    """The rendered conversation and the character span of every assistant turn in it.

    A span runs from the end of the prompt that precedes the turn (the conversation so far
    rendered with the generation prompt) to the end of the turn's own rendering (the
    conversation up to and including it), trailing whitespace excluded: the assistant content
    and its end-of-turn marker (``<|im_end|>``, ``<|eot_id|>``, eos). Templates that render
    earlier turns differently once more follow (e.g. ones that drop reasoning from old turns)
    fall back to locating the content in the text and taking the marker that follows it.
    """
    full = render_chat(template, messages, False, **tokens)
    spans, cursor = [], 0
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render_chat(template, messages[:k], True, **tokens)
        turn = render_chat(template, messages[:k + 1], False, **tokens)
        lo = len(prompt) if full.startswith(prompt) and len(prompt) >= cursor else None
        if lo is not None and full.startswith(turn) and len(turn.rstrip()) > lo:
            hi = len(turn.rstrip())
        else:
            lo, hi = _locate_content(full, turn, message["content"], cursor if lo is None else lo)
        spans.append((lo, hi))
        cursor = hi
    return full, spans


def _locate_content(full: str, turn: str, content: str, start: int) -> Tuple[int, int]:
    text = content.strip()
    pos = full.find(text, start)
    if not text or pos < 0 or turn.rfind(text) < 0:
        raise MegaliteError("the chat template does not render an assistant message's content verbatim, so its "
                            "tokens cannot be found for the loss mask")
    end = pos + len(text)
    marker = turn[turn.rfind(text) + len(text):].rstrip()
    return pos, end + len(marker) if full.startswith(marker, end) else end


def tokenize_chat(tokenizer, template: str, messages: List[Dict[str, str]],
                  train_on_prompt: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """Token ids of the rendered conversation and a bool mask of the assistant tokens.

    A token is marked when its characters overlap an assistant span; ``train_on_prompt``
    marks every token. The ids equal ``apply_chat_template(messages, tokenize=True)``.
    """
    text, spans = assistant_spans(template, messages, **tokenizer.special_tokens)
    ids, offsets = tokenizer.encode_with_offsets(text)
    ids = np.asarray(ids, dtype=np.int64)
    if train_on_prompt:
        return ids, np.ones(len(ids), dtype=bool)
    return ids, spans_to_token_mask(offsets, spans)


def spans_to_token_mask(offsets: Sequence[Tuple[int, int]], spans: Sequence[Tuple[int, int]]) -> np.ndarray:
    """True for each token whose character range [start, end) overlaps one of ``spans``."""
    mask = np.zeros(len(offsets), dtype=bool)
    if not len(offsets):
        return mask
    off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    start, end = off[:, 0], np.maximum(off[:, 1], off[:, 0] + 1)  # a zero-width token counts at its start
    for lo, hi in spans:
        mask |= (start < hi) & (end > lo)
    return mask
