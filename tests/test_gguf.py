"""GGUF export (tools/convert_checkpoint.py --to-gguf) run by llama.cpp itself (llama-cpp-python, which
scripts/setup_env.sh builds once into .venv): its tokenization equals ours on multilingual text, its
greedy continuations equal tools/generate.py's for f16, and q8_0 / q4_0 stay close, for tiny random
GQA models with a sentencepiece and a byte-level BPE tokenizer trained here, tied and untied."""

import contextlib
import ctypes
import io
import random

import numpy as np
import pytest
import torch

from megalite.config import parse_config, validate
from megalite.data.chat import render_chat
from megalite.data.tokenizer import build_tokenizer
from megalite.errors import MegaliteError
from megalite.eval.generate import generate
from megalite.eval.loading import load_model
from megalite.eval.sampling import Sampling
from megalite.hf.convert import export_hf, write_iteration0
from megalite.hf.gguf import export_gguf
from megalite.hf.gguf_vocab import gguf_vocab
from megalite.model import GPTModel
from megalite.parallel import state as pstate
from megalite.parallel.init import initialize
from tests.conftest import tiny_model_args
from tools import convert_checkpoint

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (pip install 'megalite[gguf]')")
llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (scripts/setup_env.sh "
                                                    "builds it)")

ENGLISH = ("the quick brown fox jumps over the lazy dog while rivers flow to the sea and birds sing "
           "in the morning light people read books write letters and count numbers").split()
CHINESE = ["我们", "今天", "天气", "很好", "学习", "中文", "北京", "大学", "模型", "语言", "你好", "世界"]
ACCENTED = ["café", "naïve", "résumé", "Ærø", "Zürich", "São", "Paulo", "ñandú", "Straße", "Łódź"]
EMOJI = ["🦙", "👍🏽", "🚀", "😀", "👨‍👩‍👧"]
# Held out from training; every kind of text a user's prompt may hold.
PROBES = [
    "The quick brown fox jumps over the lazy dog.",
    "我们今天学习中文，北京大学的天气很好。",
    "Café naïve résumé — Zürich, São Paulo, Łódź; Straße!",
    "Emoji 🦙🚀 and a family 👨‍👩‍👧, thumbs 👍🏽.",
    "Digits 3.14159, 2026-12-06 and 1,000,000 or 007.",
    "spaces   in  a   row\tand\t\ttabs\n\nnew  lines \n  ",
    "   leading spaces and trailing ones   ",
    "mixed 中文 and English 123 with ✨ unseen ✨ characters ζωή",
    "\n",
]
PROMPTS = ["the quick brown", "我们今天", "café 🦙 1 2 3", "people read books and"]
NEW_TOKENS = 12


def corpus_lines(n=400, seed=0):
    rng = random.Random(seed)
    pools = [ENGLISH, CHINESE, ACCENTED, EMOJI, [str(rng.randint(0, 99999)) for _ in range(50)]]
    lines = []
    for _ in range(n):
        words = [rng.choice(rng.choice(pools)) for _ in range(rng.randint(3, 12))]
        lines.append(rng.choice([" ", "  ", ", ", " "]).join(words))
    return lines


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory, one_thread):
    """(type, model, vocab, merges) flags for a sentencepiece BPE (data_tools/train_tokenizer.py) and a
    GPT-2 byte-level BPE, both trained on generated multilingual text."""
    from tokenizers import ByteLevelBPETokenizer

    from data_tools.train_tokenizer import train_tokenizer
    from tests.conftest import write_jsonl

    out = tmp_path_factory.mktemp("gguf_tok")
    lines = corpus_lines()
    data = write_jsonl(out / "corpus.jsonl", [{"text": t} for t in lines])
    spm = train_tokenizer([data], str(out / "spm"), vocab_size=500, special_tokens=["<|im_start|>", "<|im_end|>"])
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(lines, vocab_size=500, special_tokens=["<|endoftext|>"], show_progress=False)
    (out / "bpe").mkdir()
    vocab, merges = bpe.save_model(str(out / "bpe"))
    return {"spm": {"tokenizer_type": "SentencePieceTokenizer", "tokenizer_model": spm},
            "bpe": {"tokenizer_type": "GPT2BPETokenizer", "vocab_file": vocab, "merge_file": merges}}


VARIANTS = {  # GQA everywhere; head size 16 (hidden 64, 4 heads over 2 groups)
    "spm-untied-linear": ("spm", {"untie_embeddings_and_output_weights": True, "rope_type": "linear",
                                  "rope_scaling_factor": 2.0}),
    "bpe-tied-llama3": ("bpe", {"use_rope_scaling": True, "original_max_position_embeddings": 64,
                                "rotary_base": 500000}),
}
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def random_checkpoint(save, tok_flags, **model_kw):
    """A tiny random checkpoint with the tokenizer of ``tok_flags`` and the ChatML template: (tokenizer, config)."""
    flags = {k: v for k, v in tok_flags.items() if k != "tokenizer_model"}
    args = tiny_model_args("unused", tok_flags.get("tokenizer_model"), init_method_std=0.05,
                           max_position_embeddings=128, **model_kw, **flags)
    tok = build_tokenizer(tok_flags["tokenizer_type"], tok_flags.get("tokenizer_model"), tok_flags.get("vocab_file"),
                          tok_flags.get("merge_file"))
    cfg = validate(parse_config([*args, "--padded-vocab-size", str(-(-tok.vocab_size // 64) * 64)]))
    cfg.chat.chat_template = CHATML
    pstate.initialize()
    model = GPTModel(cfg.model)
    initialize(model, seed=0)
    write_iteration0(save, model.state_dict(), cfg)
    return tok, cfg


@pytest.fixture(scope="module", params=list(VARIANTS))
def exported(request, tmp_path_factory, tokenizers):
    """A random tiny checkpoint and its f16 / q8_0 / q4_0 exports."""
    kind, model_kw = VARIANTS[request.param]
    out = tmp_path_factory.mktemp(request.param)
    tok, cfg = random_checkpoint(str(out / "ck"), tokenizers[kind], **model_kw)
    files = {kind_: str(out / f"model-{kind_}.gguf") for kind_ in ("f16", "q8_0", "q4_0")}
    notes = []
    for kind_, path in files.items():
        if kind_ == "f16" and kind == "spm":  # the command a user runs, once (in this process: no start-up)
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                convert_checkpoint.main(["--to-gguf", "--load", str(out / "ck"), "--save", path])
            notes.append(err.getvalue())
        else:
            notes += export_gguf(str(out / "ck"), path, kind_)["notes"]
    files["chat"] = files["f16"]
    if kind == "spm":  # what a chat model's sentencepiece export needs (docs/serving.md)
        files["chat"] = str(out / "model-chat.gguf")
        export_gguf(str(out / "ck"), files["chat"], "f16", space_prefix=False)
    model, _ = load_model(str(out / "ck"))
    return {"name": request.param, "ck": str(out / "ck"), "tok": tok, "model": model, "files": files, "cfg": cfg,
            "notes": " ".join(notes)}


def llama(path):
    return llama_cpp.Llama(model_path=path, n_ctx=128, n_batch=128, n_threads=1, n_threads_batch=1, logits_all=True,
                           verbose=False)


def llama_cpp_greedy(llm, prompt_ids, n, eod):
    """llama.cpp's greedy continuation, and its logits at each chosen step."""
    llm.reset()
    llm.eval(prompt_ids)
    ids, logits = [], []
    for _ in range(n):
        row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        logits.append(row)
        ids.append(int(row.argmax()))
        if ids[-1] == eod:
            break
        llm.eval([ids[-1]])
    return ids, np.stack(logits)


def llama_cpp_detokenize(llm, ids):
    """llama.cpp's own detokenizer (llama-cpp-python's detokenize joins token pieces its own way)."""
    buf = ctypes.create_string_buffer(4096)
    n = llama_cpp.llama_detokenize(llm._model.vocab, (llama_cpp.llama_token * len(ids))(*ids), len(ids), buf, len(buf),
                                   False, False)
    return buf.raw[:n].decode()


def ours_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).double()[0].numpy()


def test_llama_cpp_tokenizes_like_us(exported):
    tok, llm = exported["tok"], llama(exported["files"]["f16"])
    assert llm.n_vocab() == exported["cfg"].model.padded_vocab_size
    for text in PROBES + PROMPTS:
        ours = tok.encode(text)
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ours, text
        assert llama_cpp_detokenize(llm, ours) == tok.decode(ours), text
    special = "<|im_start|>" if exported["name"].startswith("spm") else "<|endoftext|>"
    if special == "<|endoftext|>":  # byte-level BPE: special tokens inside text too
        text = "end of one<|endoftext|>the next"
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok.encode(text)
    else:  # the difference the export warns about: llama.cpp's dummy prefix after a special token
        assert "dummy prefix after every special token" in exported["notes"]
    meta = llm.metadata
    assert meta["tokenizer.chat_template"] == CHATML
    assert int(meta["tokenizer.ggml.eos_token_id"]) == tok.eod
    assert meta["general.architecture"] == "llama"
    assert int(meta["llama.attention.head_count_kv"]) == 2


# Measured (docs/serving.md): f16 0.0019-0.0035, q8_0 0.048-0.066, q4_0 0.54-0.85; a wrong layout gives ~4.
# q8_0 agreed for 3 to 12 tokens; the third token of one prompt is a near tie (margin 0.016, error 0.016).
@pytest.mark.parametrize("qtype, agree, tol", [("f16", NEW_TOKENS, 0.01), ("q8_0", 2, 0.15), ("q4_0", 0, 1.2)])
def test_llama_cpp_greedy_equals_generate(exported, qtype, agree, tol):
    """Greedy ids equal ours for `agree` tokens (all of them for f16), and llama.cpp's logits along
    its own continuation stay within `tol` of ours relative to the logits' spread (max abs diff / std)."""
    tok, model, llm = exported["tok"], exported["model"], llama(exported["files"][qtype])
    for prompt in PROMPTS:
        ids = tok.encode(prompt)
        ours = generate(model, [ids], NEW_TOKENS, Sampling(stop_ids=[tok.eod]), pad_id=tok.eod)[0]
        theirs, logits = llama_cpp_greedy(llm, ids, NEW_TOKENS, tok.eod)
        assert theirs[:agree] == ours[:agree], (qtype, prompt, theirs, ours)
        ref = ours_logits(model, ids + theirs)[len(ids) - 1 : len(ids) - 1 + len(theirs)]
        err = np.abs(logits - ref).max() / ref.std()
        assert err < tol, (qtype, prompt, err)


def test_export_refuses_what_llama_cpp_cannot_reproduce(tmp_path, tokenizers):
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus_lines(200)), model_prefix=str(tmp_path / "u"),
                                   vocab_size=150, minloglevel=2)  # unigram with nmt_nfkc: sentencepiece's defaults
    with pytest.raises(MegaliteError, match="unigram.*normalization rule 'nmt_nfkc'"):
        gguf_vocab(build_tokenizer("SentencePieceTokenizer", str(tmp_path / "u.model")), 512)
    with pytest.raises(MegaliteError, match="is a folder"):
        export_gguf(str(tmp_path), str(tmp_path))
    random_checkpoint(str(tmp_path / "qwen2"), tokenizers["bpe"], add_qkv_bias=True)
    with pytest.raises(MegaliteError, match="llama architecture .*; this model is a qwen2"):
        export_gguf(str(tmp_path / "qwen2"), str(tmp_path / "q.gguf"))
    random_checkpoint(str(tmp_path / "yarn"), tokenizers["bpe"], rope_type="yarn")
    with pytest.raises(MegaliteError, match="--rope-type yarn is not exported"):
        export_gguf(str(tmp_path / "yarn"), str(tmp_path / "y.gguf"))
    random_checkpoint(str(tmp_path / "longrope"), tokenizers["bpe"], rope_type="longrope", short_factor=[1.0] * 8,
                      long_factor=[4.0] * 8)
    with pytest.raises(MegaliteError, match="--rope-type longrope is not exported"):
        export_gguf(str(tmp_path / "longrope"), str(tmp_path / "l.gguf"))
    assert not list(tmp_path.glob("*.gguf*"))  # nothing half-written


def test_llama_cpp_chat_equals_ours(exported):
    """llama-cpp-python's chat completion, with the template stored in the file, tokenizes the ChatML
    prompt as we do and its greedy reply equals ours (a sentencepiece model exported with
    --gguf-no-space-prefix)."""
    tok, model, llm = exported["tok"], exported["model"], llama(exported["files"]["chat"])
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the quick brown 我们 🦙"}]
    prompt = render_chat(CHATML, messages, **tok.special_tokens)
    ids = tok.encode(prompt)
    assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids
    ours = generate(model, [ids], 8, Sampling(stop_ids=[tok.eod]), pad_id=tok.eod)[0]
    reply = llm.create_chat_completion(messages, temperature=0, max_tokens=8)
    assert reply["usage"]["prompt_tokens"] == len(ids)
    # the reply is our ids, as llama-cpp-python spells a continuation (after the prompt, bytes of a split
    # character dropped)
    assert reply["choices"][0]["message"]["content"] == llm.detokenize(ours, prev_tokens=ids).decode(errors="ignore")


def test_foreign_hf_tokenizers(tmp_path):
    """A users' byte-level BPE tokenizer.json (GPT-2 pre-tokenizer, ChatML special tokens) tokenizes in
    llama.cpp as ours, special tokens included; a Llama-2-style one (Metaspace, byte fallback) is refused."""
    from tests.tokenizers_zoo import bytelevel
    from tests.tokenizers_zoo import llama as llama_style

    zoo = bytelevel(tmp_path / "bytelevel")
    tok, _ = random_checkpoint(str(tmp_path / "ck"), {"tokenizer_type": "HuggingFaceTokenizer",
                                                      "tokenizer_model": zoo.tokenizer_model})
    export_gguf(str(tmp_path / "ck"), str(tmp_path / "m.gguf"), "q8_0")
    llm = llama(str(tmp_path / "m.gguf"))
    chat = render_chat(zoo.template, [{"role": "user", "content": "Hi, how are you? 🦙"}], **tok.special_tokens)
    for text in PROBES + [chat, "</s><s>Hello there</s>"]:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok.encode(text), text
    other = llama_style(tmp_path / "llama")
    with pytest.raises(MegaliteError, match="pre-tokenizer Metaspace"):
        gguf_vocab(build_tokenizer("HuggingFaceTokenizer", other.tokenizer_model), 512)


def test_hf_folder_exports_the_same_gguf(exported, tmp_path):
    """--load of the model's --to-hf folder writes the same tensors and vocabulary as the checkpoint."""
    export_hf(exported["ck"], str(tmp_path / "hf"), "fp32")
    export_gguf(str(tmp_path / "hf"), str(tmp_path / "hf.gguf"), "q8_0")
    a, b = gguf.GGUFReader(exported["files"]["q8_0"]), gguf.GGUFReader(str(tmp_path / "hf.gguf"))
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    for x, y in zip(a.tensors, b.tensors):
        assert x.tensor_type == y.tensor_type and np.array_equal(x.data, y.data), x.name
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.chat_template",
                "llama.rope.freq_base", "llama.context_length"):
        assert a.fields[key].contents() == b.fields[key].contents(), key
