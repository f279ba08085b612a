"""Write our tokenizer as a Hugging Face tokenizer folder (tokenizer.json + config).

A sentencepiece BPE model becomes an equivalent ``tokenizers`` BPE: the same pieces and
ids, merges recovered from the vocabulary (a merge's rank is the id of the piece it makes,
which is sentencepiece's score order), byte fallback, every space turned into the marker and
one marker prepended to the text, and the special and user tokens kept whole. Known
differences, shared with transformers' own Llama tokenizer: a text that starts with spaces,
or with a user special token, gets one marker piece less at its start than sentencepiece
gives it. Hugging Face tokenizers are copied;
GPT-2 BPE files are loaded and saved. No BOS is added on encode, matching how megalite
prepares pretraining data (documents end with eos instead).
"""

import json
import os
import shutil
from typing import Dict, Optional

from megalite.data.tokenizer import GPT2BPETokenizer, HuggingFaceTokenizer, SentencePieceTokenizer, Tokenizer
from megalite.utils.atomic import atomic_write


def _spm_to_tokenizers(model_file: str):
    import sentencepiece as spm
    from tokenizers import AddedToken, Tokenizer as RustTokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    sp = spm.SentencePieceProcessor(model_file=model_file)
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    merges = []
    for piece, pid in vocab.items():
        if sp.is_control(pid) or sp.is_unknown(pid) or sp.is_byte(pid) or len(piece) < 2:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                merges.append((pid, vocab[left], vocab[right], left, right))
    merges.sort()
    tok = RustTokenizer(BPE(vocab, [(m[3], m[4]) for m in merges], unk_token=sp.id_to_piece(sp.unk_id()),
                            fuse_unk=True, byte_fallback=True))
    # Spaces become the marker and one is prepended to the text, not after each special token.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1)])
    specials = [i for i in range(sp.get_piece_size()) if sp.is_control(i) or sp.is_unknown(i)]
    user = _user_defined_ids(model_file)
    tok.add_special_tokens([AddedToken(sp.id_to_piece(i), special=True, normalized=False) for i in specials])
    tok.add_tokens([AddedToken(sp.id_to_piece(i), special=False, normalized=False) for i in user])
    return tok


def _user_defined_ids(model_file: str):
    """Ids of --special-tokens pieces (type USER_DEFINED in the model's protobuf)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    with open(model_file, "rb") as f:
        proto.ParseFromString(f.read())
    return [i for i, p in enumerate(proto.pieces) if p.type == pb.ModelProto.SentencePiece.USER_DEFINED]


def _token(tok: Tokenizer, i: Optional[int]) -> Optional[str]:
    """The text of special token ``i`` (a sentencepiece piece, or the decoded token)."""
    if i is None:
        return None
    if isinstance(tok, SentencePieceTokenizer):
        return tok._sp.id_to_piece(i)
    return tok.decode([i])


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
        rust = tok._tok._tokenizer
    else:
        raise TypeError(f"cannot export {type(tok).__name__}")
    rust.save(os.path.join(out_dir, "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": _token(tok, tok.eod),
        "bos_token": _token(tok, tok.bos),
        "pad_token": _token(tok, tok.pad),
        "unk_token": _token(tok, 0) if isinstance(tok, SentencePieceTokenizer) else None,
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
