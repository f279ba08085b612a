"""SFT data: chat templates (ids equal transformers'), assistant masks, file formats, truncation,
packed rows, collation, the example cache and its errors."""

import json
import os
import unicodedata

import numpy as np
import pytest
import torch

from megalite.config import SFTConfig
from megalite.data import sft_examples
from megalite.data.chat import BUILTIN, assistant_spans, render_chat, tokenize_chat
from megalite.data.sft import SFTDataset, build_sft_datasets, collate_sft, pack_best_fit_decreasing
from megalite.data.sft_examples import truncate
from megalite.data.sft_formats import SFTSource, load_conversations, parse_data_spec, resolve_sources
from megalite.data.tokenizer import HuggingFaceTokenizer
from megalite.errors import MegaliteError
from megalite.parallel.cross_entropy import IGNORE_INDEX
from tests.conftest import run_main, write_jsonl
from tests.tokenizers_zoo import bytelevel

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "Hi, how are you?"},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris. Grüße!"}]
# Text as users have it: a message starting with a newline, runs of spaces, tabs, accents, typographic
# quotes, CJK, emoji, full-width letters, and the EOS text inside an answer (transformers: the EOS id).
MESSY = [{"role": "user", "content": "\n  Gr\u00fc\u00dfe aus Z\u00fcrich \u2014\t\u201cquoted\u201d \u2026"},
         {"role": "assistant", "content": "Fish  swim\nunder boats. \u6771\u4eac \U0001f600"},
         {"role": "user", "content": "\uff46\uff55\uff4c\uff4c  width?"},
         {"role": "assistant", "content": "\u00a33bn </s> done"}]
# What each template trains on: the assistant contents with their end-of-turn markers.
EXPECTED_TRAINED = {
    "chatml": "Hi, how are you?<|im_end|>Paris. Grüße!<|im_end|>",
    "qwen": "Hi, how are you?<|im_end|>Paris. Grüße!<|im_end|>",
    "llama3": "Hi, how are you?<|eot_id|>Paris. Grüße!<|eot_id|>",
    "llama2": " Hi, how are you? </s> Paris. Grüße! </s>",
    "mistral": " Hi, how are you?</s> Paris. Grüße!</s>",
    "alpaca": "Hi, how are you?</s>Paris. Grüße!</s>",
    "plain": "Hi, how are you?</s>Paris. Grüße!</s>",
}


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    """The zoo's byte-level BPE as a Hugging Face folder (its own template is ChatML)."""
    return bytelevel(tmp_path_factory.mktemp("hf_tok")).hf_dir


@pytest.fixture(scope="module")
def tok(tok_dir):
    return HuggingFaceTokenizer(tok_dir)


@pytest.mark.parametrize("chat", ["chat", "messy"])
@pytest.mark.parametrize("name", [*BUILTIN, "own"])
def test_template_ids_equal_transformers_and_mask_covers_assistant_turns(name, chat, zoo):
    """Each built-in template and the tokenizer's own, for each tokenizer of the zoo: the ids of
    transformers' apply_chat_template on its HF folder, special-token text (bos_token, eos_token)
    as its one id, and a mask of exactly the assistant turns."""
    tok, hf = zoo.megalite, zoo.hf
    template = zoo.template if name == "own" else BUILTIN[name]
    messages = CHAT if chat == "chat" else MESSY
    ids, mask = tokenize_chat(tok, template, messages)
    assert ids.tolist() == list(hf.apply_chat_template(messages, chat_template=template, tokenize=True,
                                                       return_dict=False))
    text, spans = assistant_spans(template, messages, **tok.special_tokens)
    for i in (tok.bos, tok.eod):
        assert ids.tolist().count(i) == text.count(tok.id_to_token(i))
    # Metaspace and sentencepiece tokens carry the space (or newline) before them, which can sit on
    # the other side of a span's edge, and nmt_nfkc folds full-width letters: compare their text
    # without whitespace, NFKC-normalized.
    squash = (lambda t: t) if zoo.name == "bytelevel" else (lambda t: "".join(unicodedata.normalize("NFKC", t).split()))
    like = name if name != "own" else "mistral" if "[INST]" in template else "chatml"
    trained = EXPECTED_TRAINED[like] if chat == "chat" else "".join(text[a:b] for a, b in spans)
    assert squash(hf.decode(ids[mask])) == squash(trained)
    bounds = [0, *[i for span in spans for i in span], len(text)]
    assert squash(hf.decode(ids[~mask])) == squash("".join(text[a:b] for a, b in zip(bounds[::2], bounds[1::2])))
    assert tokenize_chat(tok, template, messages, train_on_prompt=True)[1].all()


def test_sentencepiece_mask_maps_byte_offsets_to_characters(spm_model):
    from megalite.data.tokenizer import build_tokenizer

    spm = build_tokenizer("SentencePieceTokenizer", spm_model)
    ids, mask = tokenize_chat(spm, BUILTIN["chatml"], CHAT)  # "Grüße": sentencepiece offsets count UTF-8 bytes
    assert spm.decode(ids[mask]) == EXPECTED_TRAINED["chatml"]


def test_spans_of_a_template_that_rewrites_earlier_turns(tok):
    # Like Qwen3: only the last assistant turn gets an (empty) reasoning block, so rendering a prefix of
    # the conversation does not give a prefix of the whole rendering.
    template = BUILTIN["chatml"].replace(
        "message['role'] + '\\n' + message['content']",
        "message['role'] + '\\n' + ('<think></think>' if loop.last and message['role'] == 'assistant' else '')"
        " + message['content']")
    text, spans = assistant_spans(template, CHAT, **tok.special_tokens)
    assert [text[a:b] for a, b in spans] == ["Hi, how are you?<|im_end|>", "<think></think>Paris. Grüße!<|im_end|>"]


def test_generation_blocks_render_their_body():
    # TRL-style templates mark assistant content with {% generation %}; transformers renders the body.
    marked = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
              "{% if message['role'] == 'assistant' %}"
              "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
              "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\\n' }}{% endfor %}")
    assert render_chat(marked, CHAT, False) == render_chat(BUILTIN["chatml"], CHAT, False)


# -- formats ----------------------------------------------------------------------------------
def _messages(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


def _conversations(source):
    return [m for _, _, m in load_conversations(source)]


def test_alpaca_sharegpt_and_messages_files(tmp_path):
    alpaca = write_jsonl(tmp_path / "alpaca.jsonl", [
        {"instruction": "Sum", "input": "1 2", "output": "3", "system": "Be exact.",
         "history": [["Hi", "Hello!"]]},
        {"instruction": "Say hi", "input": "", "output": "hi"}])
    assert _conversations(SFTSource(alpaca)) == [
        _messages(("system", "Be exact."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "Sum\n1 2"),
                  ("assistant", "3")),
        _messages(("user", "Say hi"), ("assistant", "hi"))]
    sharegpt = tmp_path / "sharegpt.json"
    sharegpt.write_text(json.dumps([{"system": "Use tools.", "conversations": [
        {"from": "human", "value": "Weather?"}, {"from": "function_call", "value": "{\"name\": \"w\"}"},
        {"from": "observation", "value": "sunny"}, {"from": "gpt", "value": "Sunny."}]}]))
    assert _conversations(SFTSource(str(sharegpt))) == [
        _messages(("system", "Use tools."), ("user", "Weather?"), ("assistant", "{\"name\": \"w\"}"),
                  ("tool", "sunny"), ("assistant", "Sunny."))]
    import pyarrow as pa
    import pyarrow.parquet as pq

    chat = _messages(("system", "S"), ("user", "U"), ("assistant", "A"))
    pq.write_table(pa.Table.from_pylist([{"messages": chat}]), str(tmp_path / "openai.parquet"))
    assert _conversations(SFTSource(str(tmp_path / "openai.parquet"))) == [chat]


def test_dataset_info_columns_tags_and_weights(tmp_path):
    write_jsonl(tmp_path / "qa.jsonl", [{"q": "Why?", "a": "Because."}])
    write_jsonl(tmp_path / "dialog.jsonl", [{"turns": [{"who": "me", "text": "Yo"}, {"who": "bot", "text": "Hey"}]}])
    (tmp_path / "dataset_info.json").write_text(json.dumps({
        "qa": {"file_name": "qa.jsonl", "columns": {"prompt": "q", "response": "a"}},
        "dialog": {"file_name": "dialog.jsonl", "formatting": "sharegpt", "columns": {"messages": "turns"},
                   "tags": {"role_tag": "who", "content_tag": "text", "user_tag": "me", "assistant_tag": "bot"}}}))
    qa, dialog = resolve_sources("0.25 qa, 0.75 dialog", str(tmp_path))
    assert (qa.weight, dialog.weight) == (0.25, 0.75)
    assert _conversations(qa) == [_messages(("user", "Why?"), ("assistant", "Because."))]
    assert _conversations(dialog) == [_messages(("user", "Yo"), ("assistant", "Hey"))]
    assert parse_data_spec("a.jsonl b.jsonl") == [(None, "a.jsonl"), (None, "b.jsonl")]
    with pytest.raises(MegaliteError, match="weight before every data set or before none"):
        parse_data_spec("a.jsonl 0.5 b.jsonl")


GOOD = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}


@pytest.mark.parametrize("bad, message", [
    ({"instruction": "x"}, "record 1: missing column 'output'"),
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "robot", "value": "Hello"}]},
     "record 1: message 1: unknown role 'robot'"),
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "  "}]},
     "record 1: turn 1: empty assistant turn"),
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "human", "value": "Hello?"},
                        {"from": "gpt", "value": "Yes"}]}, "record 1: turn 1 is 'user', but turns must alternate"),
    ({"conversations": [{"from": "human", "value": "Hi"}]}, "record 1: the conversation must end with an assistant"),
    ('{"conversations": [', "line 2: not valid JSON"),
])
def test_bad_data_names_file_and_record(tmp_path, tok, bad, message):
    keys = "instruction" if isinstance(bad, dict) and "instruction" in bad else "conversations"
    first = {"instruction": "a", "output": "b"} if keys == "instruction" else GOOD
    path = write_jsonl(tmp_path / "bad.jsonl", [first, bad])
    with pytest.raises(MegaliteError, match="bad.jsonl: " + message.replace("?", r"\?").replace("(", r"\(")):
        build_sft_datasets(SFTConfig(sft_data=path), 64, tok, 4, None, 1)


def test_unreadable_and_unknown_files(tmp_path, tok):
    (tmp_path / "x.parquet").write_bytes(b"not parquet")
    with pytest.raises(MegaliteError, match="x.parquet: not a readable Parquet file"):
        build_sft_datasets(SFTConfig(sft_data=str(tmp_path / "x.parquet")), 64, tok, 4, None, 1)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(MegaliteError, match="empty.jsonl: holds no records"):
        build_sft_datasets(SFTConfig(sft_data=str(tmp_path / "empty.jsonl")), 64, tok, 4, None, 1)
    write_jsonl(tmp_path / "odd.jsonl", [{"text": "plain text"}])
    with pytest.raises(MegaliteError, match="odd.jsonl: cannot tell the format"):
        build_sft_datasets(SFTConfig(sft_data=str(tmp_path / "odd.jsonl")), 64, tok, 4, None, 1)
    with pytest.raises(MegaliteError, match="--sft-data: 'missing.jsonl': no such file"):
        build_sft_datasets(SFTConfig(sft_data="missing.jsonl"), 64, tok, 4, None, 1)


def test_template_error_names_file_and_record(tmp_path, tok):
    path = write_jsonl(tmp_path / "tools.jsonl", [GOOD, {"conversations": [
        {"from": "human", "value": "Hi"}, {"from": "function_call", "value": "f()"},
        {"from": "observation", "value": "42"}, {"from": "gpt", "value": "42"}]}])
    with pytest.raises(MegaliteError, match="tools.jsonl: record 1: chat template failed.*must alternate"):
        build_sft_datasets(SFTConfig(sft_data=path), 64, tok, 4, None, 1, chat_template="llama2")


# -- truncation ---------------------------------------------------------------------------------
def test_truncation_keeps_whole_turns_then_shares_the_budget():
    # turn 1: 3 prompt + 2 response; turn 2: 10 prompt + 6 response
    mask = np.array([0] * 3 + [1] * 2 + [0] * 10 + [1] * 6, dtype=bool)
    ids = np.arange(len(mask))
    out, out_mask, cut = truncate(ids, mask, 13)  # 8 left for turn 2: both cut, 8 * 6 / 16 = 3 response tokens
    assert cut and out.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17]
    assert out_mask.tolist() == [0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1]
    out, _, _ = truncate(ids, mask, 19)  # 14 left: the prompt (2 * 10 >= 14) is cut, the response (12 < 14) kept
    assert out.tolist() == [0, 1, 2, 3, 4] + list(range(5, 13)) + list(range(15, 21))
    assert truncate(ids, mask, 100)[2] is False


def test_truncated_and_dropped_examples_are_counted(tmp_path, tok):
    path = write_jsonl(tmp_path / "long.jsonl", [
        {"instruction": "Say hi", "output": "Hi, how are you?"},
        {"instruction": "Hello", "output": " ".join(["Paris is the capital."] * 30)},  # response cut
        {"instruction": "What is it?" * 20, "output": "Paris."},  # prompt cut, the short response kept
        # both long: the response's share of 65 ids, 65 * t / (s + t), rounds down to nothing
        {"instruction": "What is the capital of France?" * 600, "output": "Paris is the capital." * 10}])
    train, _ = build_sft_datasets(SFTConfig(sft_data=path), 64, tok, 4, None, 1, chat_template="chatml")
    assert {k: train.stats[k] for k in ("examples", "truncated", "dropped")} == \
        {"examples": 4, "truncated": 3, "dropped": 1}
    assert train.num_rows == 3 and sorted(len(train[i]["tokens"]) for i in range(3))[1:] == [64, 64]
    kept = [train.examples[i] for i in range(3)]
    assert any(tok.decode(ids[mask]) == "Paris.<|im_end|>" for ids, mask in kept)


# -- rows -------------------------------------------------------------------------------------
def _examples(n, seed=0, longest=40):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        length = int(rng.integers(2, longest + 1))
        ids = np.full(length, k, dtype=np.int64) * 1000 + np.arange(length)  # ids name their example
        mask = rng.random(length) < 0.5
        out.append((ids, mask))
    return out


def test_packing_serves_every_example_once_per_epoch_with_its_own_loss():
    examples, seq = _examples(200), 64
    ds = SFTDataset(examples, seq, packing=True, num_samples=None, seed=7)
    rows = ds.num_rows
    unpacked = SFTDataset(examples, seq, packing=False, seed=7)
    assert unpacked.num_rows == 200 and rows < 90
    assert ds.stats["packing_efficiency"] > 0.95 and ds.stats["padding_waste"] < 0.05
    assert ds.stats["tokens"] == sum(len(x) - 1 for x, _ in examples)
    two_epochs = SFTDataset(examples, seq, packing=True, num_samples=2 * rows + 5, seed=7)
    assert len(two_epochs) == 2 * rows + 5
    for epoch in range(2):
        seen = []
        for i in range(epoch * rows, (epoch + 1) * rows):
            row = two_epochs[i]
            assert len(row["tokens"]) <= seq and row["loss_mask"].dtype == torch.float32
            starts = torch.nonzero(row["position_ids"] == 0).flatten().tolist() + [len(row["tokens"])]
            for a, b in zip(starts, starts[1:]):
                k = int(row["tokens"][a]) // 1000
                ids, mask = examples[k]
                assert row["tokens"][a:b].tolist() == ids[:-1].tolist()
                assert row["labels"][a:b].tolist() == ids[1:].tolist()
                assert row["loss_mask"][a:b].tolist() == mask[1:].astype(np.float32).tolist()
                assert row["position_ids"][a:b].tolist() == list(range(b - a))
                seen.append(k)
        assert sorted(seen) == list(range(200))
    order = [two_epochs.row_of(i) for i in range(2 * rows)]
    assert order[:rows] != order[rows:]  # each epoch has its own shuffle...
    again = SFTDataset(examples, seq, packing=True, num_samples=2 * rows, seed=7)
    assert [again.row_of(i) for i in range(2 * rows)] == order  # ...and the same one in every run
    assert two_epochs[rows + 3]["tokens"].tolist() == again[rows + 3]["tokens"].tolist()


def test_best_fit_decreasing():
    assert pack_best_fit_decreasing([5, 3, 7, 2, 3], 10) == [[2, 1], [0, 4, 3]]


def test_collate_pads_with_new_documents():
    rows = [SFTDataset(_examples(3, longest=9), 16, packing=False)[i] for i in range(3)]
    lengths = [len(r["tokens"]) for r in rows]
    batch = collate_sft(rows, multiple_of=8, pad_id=5)
    width = -(-max(lengths) // 8) * 8
    assert {k: tuple(v.shape) for k, v in batch.items()} == {k: (3, width) for k in batch}
    for b, n in enumerate(lengths):
        assert batch["tokens"][b, n:].eq(5).all() and batch["labels"][b, n:].eq(IGNORE_INDEX).all()
        assert batch["loss_mask"][b, n:].eq(0).all()
        unscored = batch["loss_mask"][b] == 0  # prompts and padding: no label, the output layer skips them
        assert batch["labels"][b][unscored].eq(IGNORE_INDEX).all()
        assert batch["labels"][b, :n][~unscored[:n]].tolist() == rows[b]["labels"][~unscored[:n]].tolist()
        assert batch["position_ids"][b].tolist() == list(range(n)) + list(range(width - n))
        assert batch["loss_mask"][b, :n].tolist() == rows[b]["loss_mask"].tolist()
    assert collate_sft(rows, pad_to=32)["tokens"].shape == (3, 32)
    with pytest.raises(MegaliteError, match="does not fit pad_to=4"):
        collate_sft(rows, pad_to=4)


# -- splits, mixing, cache ------------------------------------------------------------------------
def _chat_records(n, tag):
    return [{"messages": _messages(("user", f"{tag} question {i}"), ("assistant", f"{tag} answer {i}"))}
            for i in range(n)]


def test_validation_fraction_and_weights(tmp_path, tok):
    a = write_jsonl(tmp_path / "a.jsonl", _chat_records(40, "a"))
    b = write_jsonl(tmp_path / "b.jsonl", _chat_records(10, "b"))
    cfg = SFTConfig(sft_data=f"0.5 {a} 0.5 {b}", sft_valid_fraction=0.1)
    train, valid = build_sft_datasets(cfg, 64, tok, None, None, 3)
    source_of = train.examples.picks[:, 0]
    # 36 + 9 examples left for training; equal weights give each round(45 / 2) = 22: b's 9 up-sampled
    assert (source_of == 0).sum() == 22 and (source_of == 1).sum() == 22
    assert len(set(train.examples.picks[source_of == 1, 1].tolist())) == 9
    assert len(valid.examples) == 5  # 4 of a, 1 of b
    train_ids = {(s, i) for s, i in train.examples.picks.tolist()}
    assert not train_ids & {(s, i) for s, i in valid.examples.picks.tolist()}
    again, _ = build_sft_datasets(cfg, 64, tok, None, None, 3)
    assert again.examples.picks.tolist() == train.examples.picks.tolist()
    _, other_valid = build_sft_datasets(cfg, 64, tok, None, None, 4)
    assert other_valid.examples.picks.tolist() != valid.examples.picks.tolist()
    _, separate = build_sft_datasets(SFTConfig(sft_data=a, sft_valid_data=b), 64, tok, None, 6, 3)
    assert len(separate.examples) == 10 and len(separate) == 6


def test_cache_is_reused_and_keyed(tmp_path, tok, monkeypatch):
    path = write_jsonl(tmp_path / "chat.jsonl", _chat_records(600, "c"))
    cfg = SFTConfig(sft_data=path, sft_cache_path=str(tmp_path / "cache"), packing=True)
    train, _ = build_sft_datasets(cfg, 64, tok, 100, None, 1, workers=2)  # 3 chunks over 2 processes
    assert train.examples.stores[0].built
    single = sft_examples.tokenize_example(tok, tok.chat_template, _chat_records(600, "c")[599]["messages"], 65, False)
    assert train.examples.stores[0][599][0].tolist() == single[0].tolist()

    calls = []
    real = sft_examples.tokenize_example
    monkeypatch.setattr(sft_examples, "tokenize_example", lambda *a: calls.append(1) or real(*a))
    again, _ = build_sft_datasets(cfg, 64, tok, 100, None, 1, workers=1)
    assert not again.examples.stores[0].built and not calls
    assert [again[i]["tokens"].tolist() for i in range(5)] == [train[i]["tokens"].tolist() for i in range(5)]
    other = SFTConfig(sft_data=path, sft_cache_path=cfg.sft_cache_path, train_on_prompt=True)
    assert build_sft_datasets(other, 64, tok, 100, None, 1, workers=1)[0].examples.stores[0].built
    assert len(calls) == 600  # another setting is another cache entry


def test_preprocess_sft_tool_fills_the_cache(tmp_path, tok_dir, tok):
    path = write_jsonl(tmp_path / "chat.jsonl", _chat_records(5, "t"))
    proc = run_main("tools/preprocess_sft.py", "--sft-data", path, "--seq-length", "256",
                    "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", tok_dir,
                    "--chat-template", "qwen")
    assert "5 examples, 0 truncated, 0 dropped" in proc.stdout
    train, _ = build_sft_datasets(SFTConfig(sft_data=path), 256, tok, 10, None, 1, chat_template="qwen")
    assert not train.examples.stores[0].built
    bad = run_main("tools/preprocess_sft.py", "--sft-data", str(tmp_path / "nope.jsonl"),
                   "--seq-length", "64", "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", tok_dir,
                   check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("error: --sft-data: '") \
        and bad.stderr.endswith("nope.jsonl': no such file\n")


def _build_on_rank(rank, world_size, tok_dir, path, out_dir):
    ds, _ = build_sft_datasets(SFTConfig(sft_data=path, packing=True), 64, HuggingFaceTokenizer(tok_dir), 8, None, 1)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"built": ds.examples.stores[0].built, "rows": [ds[i]["tokens"].tolist() for i in range(8)]}, f)


@pytest.mark.dist
def test_rank_zero_builds_the_cache_and_the_others_read_it(tmp_path, tok_dir):
    from tests.dist_utils import run_distributed

    path = write_jsonl(tmp_path / "chat.jsonl", _chat_records(20, "d"))
    run_distributed(_build_on_rank, 2, tok_dir, path, str(tmp_path))
    results = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(2)]
    assert [r["built"] for r in results] == [True, False] and results[0]["rows"] == results[1]["rows"]
