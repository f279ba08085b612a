import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def english_documents():
    """Real English prose that ships with CPython: its documentation topics, split into docs."""
    from pydoc_data.topics import topics

    docs = []
    for name in sorted(topics):
        docs += [p.strip() for p in topics[name].split("\n\n\n") if p.strip()]
    return docs


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(r if isinstance(r, str) else json.dumps(r))
            f.write("\n")
    return str(path)


def run_tool(*args, check=True):
    """Run a repo script the way a user does; returns the CompletedProcess."""
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def english_jsonl(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "english.jsonl",
                       [{"text": d} for d in english_documents()])


@pytest.fixture(scope="session")
def spm_model(tmp_path_factory, english_jsonl):
    from data_tools.train_tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tok")
    return train_tokenizer([english_jsonl], str(out), vocab_size=1000, special_tokens=["<|im_start|>"])
