"""Write our tokenizer as a Hugging Face tokenizer folder (tokenizer.json + config).

A sentencepiece model becomes a ``tokenizers`` Tokenizer that encodes as SentencePieceTokenizer
does (docs/hf.md has the settings tested): its whole normalizer spec (character map, extra
whitespace removal, escaped spaces, dummy prefix), its model (Unigram with the piece scores, or
BPE with merges recovered from the vocabulary), byte fallback, and its control, unknown and
user-defined pieces as added tokens found in the normalized text. A setting it cannot express
(model type word or char, unused pieces, a special piece the normalization changes) is refused
with a MegaliteError. Hugging Face tokenizers are copied; GPT-2 BPE files are saved with their
special token. No BOS is added on encode, matching how megalite prepares pretraining data
(documents end with eos instead).
"""

import json
import os
import re
import shutil
from typing import Dict, Optional

from tokenizers import AddedToken, Regex, decoders, normalizers
from tokenizers import Tokenizer as RustTokenizer
from tokenizers.models import BPE, Unigram

from megalite.data.tokenizer import (
    SPACE_MARK,
    SPM_WHOLE_TYPES,
    GPT2BPETokenizer,
    HuggingFaceTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    read_spm_proto,
)
from megalite.errors import MegaliteError
from megalite.utils.atomic import atomic_write


def _spm_to_tokenizers(model_file: str):
    """A ``tokenizers`` Tokenizer that encodes like SentencePieceTokenizer on ``model_file``."""
    proto = read_spm_proto(model_file)
    trainer, spec = proto.trainer_spec, proto.normalizer_spec
    unsupported = [p.piece for p in proto.pieces if p.type == _UNUSED]
    if unsupported:
        raise MegaliteError(f"{model_file}: cannot export a sentencepiece model with unused pieces "
                            f"({unsupported[0]!r}, ...): tokenizers would produce them")
    if spec.name.endswith("_cf"):
        raise MegaliteError(f"{model_file}: cannot export normalization_rule_name={spec.name}: tokenizers' "
                            "Precompiled normalizer drops the combining marks after a case-folded letter")
    tok = RustTokenizer(_spm_model(proto, model_file))
    whole = [p for p in proto.pieces if p.type in SPM_WHOLE_TYPES]
    steps = [normalizers.Precompiled(spec.precompiled_charsmap)] if spec.precompiled_charsmap else []
    if spec.remove_extra_whitespaces:  # sentencepiece strips and collapses spaces only, after its charsmap
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.escape_whitespaces:
        steps.append(normalizers.Replace(" ", SPACE_MARK))
    if spec.add_dummy_prefix:  # before a non-empty text that does not start with a special token
        starts = "".join("|" + re.escape(p.piece) for p in whole)
        steps.append(normalizers.Replace(Regex(r"\A(?!\z" + starts + ")"), SPACE_MARK))
    tok.normalizer = normalizers.Sequence(steps)
    steps = [decoders.Replace(trainer.unk_piece, trainer.unk_surface), decoders.Replace(SPACE_MARK, " ")]
    steps += [decoders.ByteFallback()] if trainer.byte_fallback else []
    steps += [decoders.Fuse()] + [decoders.Strip(content=" ", left=1)] * spec.add_dummy_prefix
    tok.decoder = decoders.Sequence(steps)
    # Special texts are found in the normalized text (as SentencePieceTokenizer does), so the
    # normalization and the dummy prefix see the whole text.
    for p in whole:
        if tok.normalizer.normalize_str(p.piece) != p.piece:
            raise MegaliteError(f"{model_file}: cannot export special piece {p.piece!r}: the model's "
                                "normalization changes its text, so tokenizers would not find it")
        token = AddedToken(p.piece, special=p.type != _USER_DEFINED, normalized=True)
        (tok.add_tokens if p.type == _USER_DEFINED else tok.add_special_tokens)([token])
    return tok


def _spm_model(proto, model_file: str):
    """sentencepiece's segmentation model as a ``tokenizers`` model: Unigram with the piece
    scores, or BPE with merges recovered from the vocabulary (a merge ranks as the score of the
    piece it makes, sentencepiece's order)."""
    trainer = proto.trainer_spec
    kind = trainer.model_type
    if kind == _UNIGRAM:
        return Unigram([(p.piece, p.score) for p in proto.pieces], unk_id=trainer.unk_id,
                       byte_fallback=trainer.byte_fallback)
    if kind != _BPE:
        name = {3: "word", 4: "char"}.get(kind, str(kind))
        raise MegaliteError(f"{model_file}: cannot export a sentencepiece model_type={name} model "
                            "(unigram and bpe are supported)")
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    merges = []
    for piece, pid in vocab.items():
        if proto.pieces[pid].type != _NORMAL:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                merges.append((-proto.pieces[pid].score, pid, vocab[left], left, right))
    merges.sort()
    return BPE(vocab, [(m[3], m[4]) for m in merges], unk_token=trainer.unk_piece, fuse_unk=True,
               byte_fallback=trainer.byte_fallback)


# ModelProto.SentencePiece types and TrainerSpec model types.
_NORMAL, _USER_DEFINED, _UNUSED = 1, 4, 5
_UNIGRAM, _BPE = 1, 2


def export_tokenizer(tok: Tokenizer, out_dir: str, chat_template: Optional[str] = None) -> Dict:
    """Write ``tok`` into ``out_dir``; returns the special token ids for generation_config.json."""
    os.makedirs(out_dir, exist_ok=True)
    if isinstance(tok, HuggingFaceTokenizer):
        src = tok.path if os.path.isdir(tok.path) else os.path.dirname(tok.path)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                     "chat_template.jinja"):
            if os.path.isfile(os.path.join(src, name)):
                shutil.copy(os.path.join(src, name), os.path.join(out_dir, name))
        if chat_template and chat_template != tok.chat_template:
            path = os.path.join(out_dir, "tokenizer_config.json")
            config = json.load(open(path)) if os.path.isfile(path) else {}
            config["chat_template"] = chat_template
            with atomic_write(path, "w") as f:
                json.dump(config, f, indent=2)
            _write_template(out_dir, chat_template)
        return {"bos_token_id": tok.bos, "eos_token_id": tok.eod, "pad_token_id": tok.pad}
    if isinstance(tok, SentencePieceTokenizer):
        rust = _spm_to_tokenizers(tok.model_file)
        shutil.copy(tok.model_file, os.path.join(out_dir, "tokenizer.model"))
    elif isinstance(tok, GPT2BPETokenizer):
        rust = tok._tok
    else:
        raise TypeError(f"cannot export {type(tok).__name__}")
    rust.save(os.path.join(out_dir, "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **tok.special_tokens,  # what a chat template sees, here and in transformers
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000_000,
    }
    if chat_template:
        config["chat_template"] = chat_template
        _write_template(out_dir, chat_template)
    with atomic_write(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({k: v for k, v in config.items() if v is not None}, f, indent=2)
    return {"bos_token_id": tok.bos, "eos_token_id": tok.eod, "pad_token_id": tok.pad}


def _write_template(out_dir: str, template: str) -> None:
    """chat_template.jinja, where recent transformers look first (and save templates)."""
    with atomic_write(os.path.join(out_dir, "chat_template.jinja"), "w") as f:
        f.write(template)
