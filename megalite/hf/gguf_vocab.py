"""Our tokenizer as a GGUF vocabulary that llama.cpp encodes with as we do.

- A sentencepiece BPE model (what data_tools/train_tokenizer.py writes) becomes llama.cpp's
  ``llama`` tokenizer: every piece with its score and type (sentencepiece's piece types are
  GGUF's token types), the dummy prefix as ``add_space_prefix``. llama.cpp applies no
  normalization and merges pieces by score as sentencepiece's BPE does, so a model with a
  normalization rule, extra-whitespace removal, unused pieces or a unigram model is refused.
- A byte-level BPE (GPT-2 ``vocab.json`` + ``merges.txt``, or a HF ``tokenizer.json`` of that
  kind) becomes llama.cpp's ``gpt2`` tokenizer with its merges and the ``gpt-2`` pre-tokenizer
  (GPT-2's split regex); a normalizer, another pre-tokenizer or a prefix space is refused.

Special tokens: bos / eos (our end-of-document) / pad / unk ids; control and added tokens keep
their text, so llama.cpp finds them in text as we do; no BOS is added on encode (megalite's
convention). Ids past the tokenizer (the padded vocabulary) become unused ``[PAD<id>]`` tokens.
One difference cannot be written down: llama.cpp puts the sentencepiece dummy prefix after
every special token, where we (and transformers) add it only at the start of a text that does
not begin with one. ``space_prefix=False`` turns llama.cpp's off: prompts that begin with a
special token (ChatML-style chat templates) then tokenize exactly as ours, plain text loses the
prefix of its first word. ``notes`` says which difference the file keeps.
"""

import json
from dataclasses import dataclass, field
from typing import List, Optional

from megalite.data.tokenizer import (
    GPT2BPETokenizer,
    HuggingFaceTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    read_spm_proto,
)
from megalite.errors import MegaliteError

# GGUF token types (the same numbers as sentencepiece's piece types).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_SPM_BPE = 2  # TrainerSpec.model_type


@dataclass
class GGUFVocab:
    model: str  # llama.cpp's tokenizer.ggml.model: "llama" (sentencepiece) or "gpt2" (byte-level BPE)
    pre: str
    tokens: List[str]
    types: List[int]
    tok: Tokenizer
    scores: Optional[List[float]] = None
    merges: Optional[List[str]] = None
    add_space_prefix: bool = False
    notes: List[str] = field(default_factory=list)

    def write(self, w) -> None:
        w.add_tokenizer_model(self.model)
        w.add_tokenizer_pre(self.pre)
        w.add_token_list(self.tokens)
        w.add_token_types(self.types)
        if self.scores is not None:
            w.add_token_scores(self.scores)
        if self.merges is not None:
            w.add_token_merges(self.merges)
        if self.model == "llama":
            w.add_add_space_prefix(self.add_space_prefix)
        w.add_add_bos_token(False)
        w.add_add_eos_token(False)
        for ident, add in ((self.tok.bos, w.add_bos_token_id), (self.tok.eod, w.add_eos_token_id),
                           (self.tok.pad, w.add_pad_token_id), (self.tok.unk, w.add_unk_token_id)):
            if ident is not None:
                add(ident)


def gguf_vocab(tok: Tokenizer, vocab_size: int, space_prefix: bool = True) -> GGUFVocab:
    """The GGUF vocabulary of ``tok``, padded to the model's ``vocab_size`` rows."""
    if tok.vocab_size > vocab_size:
        raise MegaliteError(f"the tokenizer has {tok.vocab_size} tokens, the model only {vocab_size} rows")
    if isinstance(tok, SentencePieceTokenizer):
        vocab = _sentencepiece(tok, space_prefix)
    elif isinstance(tok, (GPT2BPETokenizer, HuggingFaceTokenizer)):
        vocab = _byte_level_bpe(tok)
    else:
        raise MegaliteError(f"cannot export a {type(tok).__name__} to GGUF")
    for i in range(len(vocab.tokens), vocab_size):
        vocab.tokens.append(f"[PAD{i}]")
        vocab.types.append(UNUSED)
        if vocab.scores is not None:
            vocab.scores.append(-10000.0)
    return vocab


def _sentencepiece(tok: SentencePieceTokenizer, space_prefix: bool) -> GGUFVocab:
    where = tok.model_file
    proto = read_spm_proto(where)
    trainer, spec = proto.trainer_spec, proto.normalizer_spec
    problems = []
    if trainer.model_type != _SPM_BPE:
        problems.append("a unigram/word/char model (llama.cpp merges pieces like sentencepiece's BPE)")
    if spec.precompiled_charsmap:
        problems.append(f"normalization rule {spec.name!r} (llama.cpp does not normalize text)")
    if spec.remove_extra_whitespaces:
        problems.append("remove_extra_whitespaces")
    if not spec.escape_whitespaces or trainer.treat_whitespace_as_suffix:
        problems.append("spaces not escaped as a prefix '\u2581'")
    if any(p.type == UNUSED for p in proto.pieces):
        problems.append("unused pieces (llama.cpp would merge into them)")
    if problems:
        raise MegaliteError(f"{where}: llama.cpp cannot tokenize as this sentencepiece model does: "
                            + "; ".join(problems))
    notes = []
    if spec.add_dummy_prefix and space_prefix and tok.special_texts:
        notes.append("llama.cpp adds the sentencepiece dummy prefix after every special token in a text "
                     "(megalite and transformers only at its start): prompts with special tokens (chat "
                     "templates) can tokenize differently right after them; --gguf-no-space-prefix makes "
                     "prompts that start with a special token tokenize as megalite does")
    elif spec.add_dummy_prefix and not space_prefix:
        notes.append("--gguf-no-space-prefix: llama.cpp adds no dummy prefix, so a prompt that does not start "
                     "with a special token loses the '\u2581' of its first word (megalite adds it)")
    return GGUFVocab("llama", "default", [p.piece for p in proto.pieces], [p.type for p in proto.pieces], tok,
                     scores=[p.score for p in proto.pieces], add_space_prefix=spec.add_dummy_prefix and space_prefix,
                     notes=notes)


def _byte_level_bpe(tok) -> GGUFVocab:
    where = getattr(tok, "path", None) or tok.source_files[0]
    spec = json.loads(tok._tok.to_str())
    model, pre = spec["model"], spec.get("pre_tokenizer") or {}
    problems = []
    if model.get("type") != "BPE":
        problems.append(f"a {model.get('type')} model (byte-level BPE is exported)")
    if spec.get("normalizer"):
        problems.append(f"a {spec['normalizer'].get('type')} normalizer (llama.cpp's BPE does not normalize)")
    if pre.get("type") != "ByteLevel" or not pre.get("use_regex", True):
        problems.append(f"pre-tokenizer {pre.get('type')} (llama.cpp's gpt-2 pre-tokenizer is GPT-2's ByteLevel)")
    elif pre.get("add_prefix_space"):
        problems.append("add_prefix_space")
    if model.get("byte_fallback") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix") \
            or model.get("ignore_merges"):
        problems.append("byte fallback, subword prefixes/suffixes or ignore_merges")
    if problems:
        raise MegaliteError(f"{where}: llama.cpp cannot tokenize as this tokenizer does: " + "; ".join(problems))
    size = tok._tok.get_vocab_size(with_added_tokens=True)
    tokens: List[Optional[str]] = [None] * size
    types = [NORMAL] * size
    for text, i in model["vocab"].items():
        tokens[i] = text
    for i, t in tok._tok.get_added_tokens_decoder().items():
        tokens[i], types[i] = t.content, CONTROL if t.special else USER_DEFINED
    for i, t in enumerate(tokens):
        if t is None:
            tokens[i], types[i] = f"[PAD{i}]", UNUSED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return GGUFVocab("gpt2", "gpt-2", tokens, types, tok, merges=merges)
