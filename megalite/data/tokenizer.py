"""One tokenizer interface over sentencepiece models, Hugging Face tokenizers and GPT-2 BPE files.

``build_tokenizer`` takes Megatron's ``--tokenizer-type`` names. Every tokenizer exposes the
vocabulary size, the end-of-document id (appended by ``--append-eod``), bos/pad ids when the
vocabulary has them, and encode / batch-encode / decode. Encoding never adds special tokens:
pretraining data marks document boundaries with ``eod`` explicitly.
"""

import hashlib
import json
import os
import re
from abc import ABC, abstractmethod
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import sentencepiece
from google.protobuf.message import DecodeError
from sentencepiece import sentencepiece_model_pb2 as pb
from sentencepiece import sentencepiece_pb2  # serialized_proto: the one spelling every version has
from tokenizers import AddedToken, ByteLevelBPETokenizer
from tokenizers import Tokenizer as RustTokenizer

from megalite.errors import MegaliteError

# Raised when the same files encode differently from before (caches keyed by fingerprint()
# are then rebuilt): 2 = special-token texts encode to their ids.
ENCODING_VERSION = 2


class Tokenizer(ABC):
    vocab_size: int
    eod: int
    bos: Optional[int] = None
    pad: Optional[int] = None
    unk: Optional[int] = None
    chat_template: Optional[str] = None  # Jinja, as in HF tokenizer_config.json
    special_texts: Dict[str, int] = {}  # text -> id of every token whose text encodes to it alone
    source_files: Sequence[str] = ()  # what fingerprint() hashes

    @abstractmethod
    def encode_batch(self, texts: Sequence[str]) -> List[List[int]]:
        """Token ids of each text, on the calling thread only (workers parallelise above us)."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    def encode(self, text: str) -> List[int]:
        return self.encode_batch([text])[0]

    def encode_text(self, text: str) -> List[int]:
        """Ids as ``transformers`` gives for ``tokenizer(text)``: with the special tokens its
        post-processor adds (a BOS, say). Without a post-processor, the same as ``encode``."""
        return self.encode(text)

    @abstractmethod
    def encode_with_offsets(self, text: str) -> Tuple[List[int], List[Tuple[int, int]]]:
        """Token ids of ``text`` and each token's character range ``[start, end)`` in it."""

    @property
    def special_tokens(self) -> Dict[str, str]:
        """The special tokens a chat template sees as variables: ``bos_token``, ``eos_token``, ..."""
        named = {"eos_token": self.eod, "bos_token": self.bos, "pad_token": self.pad, "unk_token": self.unk}
        return {name: self.id_to_token(i) for name, i in named.items() if i is not None}

    @abstractmethod
    def id_to_token(self, i: int) -> str: ...

    def split_special(self, text: str) -> List[Tuple[int, int, Optional[int]]]:
        """``text`` cut at the texts of special tokens, longest first: ``(start, end, id)`` for
        each special token and ``(start, end, None)`` for each non-empty stretch between."""
        if not self.special_texts:
            return [(0, len(text), None)] if text else []
        if getattr(self, "_special_re", None) is None:
            alternatives = sorted(self.special_texts, key=len, reverse=True)
            self._special_re = re.compile("|".join(map(re.escape, alternatives)))
        parts, at = [], 0
        for m in self._special_re.finditer(text):
            if m.start() > at:
                parts.append((at, m.start(), None))
            parts.append((m.start(), m.end(), self.special_texts[m.group()]))
            at = m.end()
        if at < len(text):
            parts.append((at, len(text), None))
        return parts

    def fingerprint(self) -> str:
        """A digest of the files this tokenizer was built from: equal digests encode equally."""
        digest = hashlib.md5(f"{type(self).__name__} {ENCODING_VERSION}".encode())
        for path in self.source_files:
            digest.update(os.path.basename(path).encode())
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    digest.update(hashlib.md5(f.read()).digest())
        return digest.hexdigest()

    @property
    def special_ids(self) -> set:
        """Ids that stand for no text (what HF's ``skip_special_tokens`` drops when decoding)."""
        return {i for i in (self.eod, self.bos, self.pad, self.unk) if i is not None}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, eod={self.eod})"


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece ``.model`` file (Llama-style; what data_tools/train_tokenizer.py writes).

    Special-token texts (control, unknown and user-defined pieces) encode to their one id, as
    transformers does on our export (megalite/hf/tokenizer.py): the model's normalization
    (character map, whitespace removal, escaping) applies to the whole text, special-token
    texts are then found in it (longest first), the dummy prefix goes before the text's first
    piece unless the text starts with a special token, and the text after a special token is
    segmented as it stands (no dummy prefix: transformers' Llama convention). A text without
    special tokens encodes exactly as sentencepiece encodes it.
    """

    def __init__(self, model_file: str):
        _require_file(model_file, "--tokenizer-model")
        self.model_file = model_file
        self.source_files = (model_file,)
        proto = read_spm_proto(model_file)
        spec = proto.normalizer_spec
        if spec.add_dummy_prefix and (proto.trainer_spec.treat_whitespace_as_suffix or not spec.escape_whitespaces):
            raise MegaliteError(f"{model_file}: a dummy prefix with treat_whitespace_as_suffix or without "
                                "escape_whitespaces is not supported")
        self._sp = sentencepiece.SentencePieceProcessor(model_proto=proto.SerializeToString())
        self._dummy = SPACE_MARK if spec.add_dummy_prefix else ""
        # One processor normalizes whole texts (its dummy prefix is ours to place), one segments
        # normalized text as it stands.
        spec.add_dummy_prefix = False
        self._normalizer = sentencepiece.SentencePieceProcessor(model_proto=proto.SerializeToString())
        spec.precompiled_charsmap, spec.remove_extra_whitespaces, spec.name = b"", False, "identity"
        self._segmenter = sentencepiece.SentencePieceProcessor(model_proto=proto.SerializeToString())
        self.vocab_size = self._sp.get_piece_size()
        self.eod = _or_none(self._sp.eos_id())
        self.bos = _or_none(self._sp.bos_id())
        self.pad = _or_none(self._sp.pad_id())
        self.unk = _or_none(self._sp.unk_id())
        if self.eod is None:
            raise MegaliteError(f"{model_file}: the sentencepiece model has no eos piece to use as eod")
        self.special_texts = {p.piece: i for i, p in enumerate(proto.pieces) if p.type in SPM_WHOLE_TYPES}

    def _with_dummy(self, norm: str, start: int, end: int) -> str:
        return (self._dummy if start == 0 else "") + norm[start:end]

    def encode_batch(self, texts):
        norms = self._normalizer.normalize(list(texts)) if texts else []
        cuts = [self.split_special(norm) for norm in norms]
        pieces = iter(self._segmenter.encode([self._with_dummy(norm, start, end) for norm, parts in zip(norms, cuts)
                                              for start, end, sid in parts if sid is None], num_threads=1))
        out = []
        for parts in cuts:
            if len(parts) == 1 and parts[0][2] is None:
                out.append(next(pieces))
                continue
            ids = []
            for _, _, sid in parts:
                ids += next(pieces) if sid is None else [sid]
            out.append(ids)
        return out

    def decode(self, ids):
        return self._sp.decode([int(i) for i in ids])

    def encode_with_offsets(self, text):
        norm, offsets = self._normalizer.normalize(text, with_offsets=True)
        ids, spans = [], []
        for start, end, sid in self.split_special(norm):
            if sid is not None:
                ids.append(sid)
                spans.append((offsets[start], offsets[end]))
                continue
            piece_text = self._with_dummy(norm, start, end)
            shift = start - (len(piece_text) - (end - start))  # the dummy prefix sits before `start`
            # sentencepiece reports UTF-8 byte offsets into piece_text; map them to characters.
            char_at = np.repeat(np.arange(len(piece_text) + 1), [len(c.encode()) for c in piece_text] + [1])
            proto = self._segmenter.encode(piece_text, out_type="serialized_proto")
            for p in sentencepiece_pb2.SentencePieceText.FromString(proto).pieces:
                lo, hi = (max(int(char_at[b]) + shift, start) for b in (p.begin, p.end))
                ids.append(p.id)
                spans.append((offsets[lo], offsets[hi]))
        return ids, spans

    def id_to_token(self, i):
        return self._sp.id_to_piece(int(i))


SPACE_MARK = "\u2581"  # sentencepiece's escaped space
SPM_WHOLE_TYPES = (2, 3, 4)  # ModelProto.SentencePiece types UNKNOWN, CONTROL, USER_DEFINED: kept whole


def read_spm_proto(model_file: str):
    """The ``ModelProto`` of a sentencepiece model file (its pieces, trainer and normalizer specs)."""
    proto = pb.ModelProto()
    with open(model_file, "rb") as f:
        try:
            proto.ParseFromString(f.read())
        except DecodeError:
            proto.Clear()
    if not proto.pieces:
        raise MegaliteError(f"{model_file}: not a sentencepiece model")
    return proto


class _TokenizersLibTokenizer(Tokenizer):
    """Shared code for tokenizers built on the Rust ``tokenizers`` library."""

    def _setup(self, tok, eod_token: Optional[str], bos_token=None, pad_token=None, where="", unk_token=None,
               more_special=()):
        # transformers registers every special token its config names as an added token when it
        # loads a tokenizer; registering them here too makes their texts encode to one id alike.
        named = [t for t in (eod_token, bos_token, pad_token, unk_token, *more_special) if t]
        added = {t.content for t in tok.get_added_tokens_decoder().values()}
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t in dict.fromkeys(named) if t not in added])
        self._tok = tok
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self.special_texts = {t.content: i for i, t in tok.get_added_tokens_decoder().items()}
        self.eod = tok.token_to_id(eod_token) if eod_token else None
        if self.eod is None:
            raise MegaliteError(f"{where}: no end-of-document token ({eod_token!r}) in the vocabulary")
        self.bos = tok.token_to_id(bos_token) if bos_token else None
        self.pad = tok.token_to_id(pad_token) if pad_token else None
        self.unk = tok.token_to_id(unk_token) if unk_token else None

    def encode_batch(self, texts):
        # encode_batch in the Rust library fans out over its own thread pool; we want one thread.
        return [self._tok.encode(t, add_special_tokens=False).ids for t in texts]

    def decode(self, ids):
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def encode_text(self, text):
        return self._tok.encode(text, add_special_tokens=True).ids

    def encode_with_offsets(self, text):
        enc = self._tok.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

    def id_to_token(self, i):
        return self._tok.id_to_token(int(i))


class HuggingFaceTokenizer(_TokenizersLibTokenizer):
    """A Hugging Face tokenizer folder (with tokenizer.json) or a bare ``tokenizer.json``."""

    def __init__(self, path: str):
        folder = path if os.path.isdir(path) else os.path.dirname(path)
        file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        _require_file(file, "--tokenizer-model")
        config = _read_json(os.path.join(folder, "tokenizer_config.json"))
        specials = {**config, **_read_json(os.path.join(folder, "special_tokens_map.json"))}
        tok = RustTokenizer.from_file(file)
        eod = _token_str(specials.get("eos_token")) or _guess_eod(tok)
        extra = [specials.get(key) or [] for key in ("additional_special_tokens", "extra_special_tokens")]
        extra = [_token_str(t) for tokens in extra for t in (tokens.values() if isinstance(tokens, dict) else tokens)]
        self._setup(tok, eod, _token_str(specials.get("bos_token")), _token_str(specials.get("pad_token")), file,
                    _token_str(specials.get("unk_token")),
                    [_token_str(specials.get(name)) for name in _TEMPLATE_SPECIALS] + extra)
        self.path = path
        self.source_files = (file, os.path.join(folder, "tokenizer_config.json"))
        self.chat_template = config.get("chat_template")
        self._specials = {name: _token_str(specials[name]) for name in _TEMPLATE_SPECIALS if specials.get(name)}

    @property
    def special_tokens(self):
        # The strings transformers hands a chat template, as the tokenizer's config names them.
        return {**super().special_tokens, **self._specials}


class GPT2BPETokenizer(_TokenizersLibTokenizer):
    """GPT-2 byte-level BPE from ``vocab.json`` + ``merges.txt`` (Megatron's GPT2BPETokenizer)."""

    def __init__(self, vocab_file: str, merge_file: str):
        _require_file(vocab_file, "--vocab-file")
        _require_file(merge_file, "--merge-file")
        tok = ByteLevelBPETokenizer(vocab_file, merge_file)._tokenizer  # the Rust tokenizer inside
        self.source_files = (vocab_file, merge_file)
        self._setup(tok, "<|endoftext|>", where=vocab_file)


_TEMPLATE_SPECIALS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")

TOKENIZER_TYPES = (
    "SentencePieceTokenizer",
    "GPTSentencePieceTokenizer",
    "Llama2Tokenizer",
    "HuggingFaceTokenizer",
    "GPT2BPETokenizer",
)


def build_tokenizer(
    tokenizer_type: str,
    tokenizer_model: Optional[str] = None,
    vocab_file: Optional[str] = None,
    merge_file: Optional[str] = None,
) -> Tokenizer:
    """Build a tokenizer from Megatron-style flags."""
    if tokenizer_type in ("SentencePieceTokenizer", "GPTSentencePieceTokenizer", "Llama2Tokenizer"):
        return SentencePieceTokenizer(_need(tokenizer_model, "--tokenizer-model", tokenizer_type))
    if tokenizer_type == "HuggingFaceTokenizer":
        return HuggingFaceTokenizer(_need(tokenizer_model, "--tokenizer-model", tokenizer_type))
    if tokenizer_type == "GPT2BPETokenizer":
        return GPT2BPETokenizer(
            _need(vocab_file, "--vocab-file", tokenizer_type),
            _need(merge_file, "--merge-file", tokenizer_type),
        )
    raise MegaliteError(
        f"--tokenizer-type {tokenizer_type!r} is not supported; choose one of {', '.join(TOKENIZER_TYPES)}"
    )


def add_tokenizer_args(parser) -> None:
    """Megatron's tokenizer flags, shared by every tool that tokenizes or decodes."""
    g = parser.add_argument_group("tokenizer")
    g.add_argument("--tokenizer-type", required=True, choices=TOKENIZER_TYPES)
    g.add_argument("--tokenizer-model", help="sentencepiece .model, HF folder or tokenizer.json")
    g.add_argument("--vocab-file", help="GPT-2 BPE vocab.json")
    g.add_argument("--merge-file", help="GPT-2 BPE merges.txt")


def _need(value, flag, tokenizer_type):
    if not value:
        raise MegaliteError(f"--tokenizer-type {tokenizer_type} needs {flag}")
    return value


def _require_file(path: str, flag: str) -> None:
    if not os.path.isfile(path):
        raise MegaliteError(f"{flag} {path}: no such file")


def _or_none(i: int) -> Optional[int]:
    return None if i < 0 else i


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _token_str(value) -> Optional[str]:
    """Special tokens in HF configs are a string or an AddedToken dict with a 'content' key."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def _guess_eod(tok) -> Optional[str]:
    for name in ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>"):
        if tok.token_to_id(name) is not None:
            return name
    return None
