"""rl_gpt.py's prompts as a user brings them: text and chat messages, in JSON lines, Parquet, a
``datasets`` save_to_disk folder and a LLaMA-Factory dataset_info.json that maps ``prompt`` onto
another column, under each tokenizer of the zoo (byte-level BPE, Llama-style, sentencepiece). The
ids are trl 1.16's (GRPOTrainer._tokenize_prompts: ``tokenizer(text)`` for text, the chat template's
``apply_chat_template(add_generation_prompt=True)`` for messages), the other columns reach the reward
functions, and a prompt over the budget is dropped and counted."""

import json

import pytest

from megalite.config import RLConfig
from megalite.posttrain.rl.prompts import load_prompts
from tests.tokenizers_zoo import zoo  # noqa: F401 (the fixture)

pytest.importorskip("transformers")

LONG = "the sky is blue " * 80  # over the budget: dropped and counted
RECORDS = {  # a dataset is text prompts or conversations throughout
    "text": [{"question": "What is the capital of France?", "solution": "Paris", "level": 1},
             {"question": "Hello there", "solution": "hi", "level": 2},
             {"question": LONG, "solution": "long", "level": 3}],
    "messages": [{"question": [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "Hi, how are you?"}], "solution": "fine", "level": 1},
                 {"question": [{"role": "user", "content": "What is the capital of France?"}], "solution": "Paris",
                  "level": 2},
                 {"question": [{"role": "user", "content": LONG}], "solution": "long", "level": 3}],
}
BUDGET = 120


def write(kind: str, records, folder) -> str:
    """The records in ``kind``'s format (column ``prompt``, or ``question`` mapped by dataset_info.json);
    the --prompt-data value."""
    as_prompt = [{"prompt" if k == "question" else k: v for k, v in r.items()} for r in records]
    if kind == "jsonl":
        path = folder / "prompts.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in as_prompt))
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = folder / "prompts.parquet"
        pq.write_table(pa.Table.from_pylist(as_prompt), path)
    elif kind == "datasets":
        import datasets

        path = folder / "saved"
        datasets.Dataset.from_list(as_prompt).save_to_disk(str(path))
    else:  # dataset_info.json naming a JSON file whose prompt column is "question"
        (folder / "math.json").write_text(json.dumps(records))
        (folder / "dataset_info.json").write_text(json.dumps(
            {"math_rl": {"file_name": "math.json", "columns": {"prompt": "question"}}}))
        return "math_rl"
    return str(path)


def expected_ids(zoo_tok, prompt):  # noqa: F811
    if isinstance(prompt, str):
        return zoo_tok.hf(prompt)["input_ids"]
    return list(zoo_tok.hf.apply_chat_template(prompt, chat_template=zoo_tok.template, add_generation_prompt=True,
                                               tokenize=True, return_dict=False))


@pytest.mark.parametrize("style", ["text", "messages"])
@pytest.mark.parametrize("kind", ["jsonl", "parquet", "datasets", "dataset_info"])
def test_prompts_equal_trls_ids_in_every_format(kind, style, zoo, tmp_path):  # noqa: F811
    records = RECORDS[style]
    spec = write(kind, records, tmp_path)
    cfg = RLConfig(prompt_data=spec, prompt_dataset_dir=str(tmp_path) if kind == "dataset_info" else None)
    prompts, dropped = load_prompts(cfg, zoo.template, zoo.megalite, BUDGET)
    assert dropped == 1 and len(prompts) == 2
    for p, record in zip(prompts, records):
        assert p.ids == expected_ids(zoo, record["question"])
        assert p.columns == {"solution": record["solution"], "level": record["level"]}
