"""examples/clean_and_tokenize_zh.sh, small: a raw Chinese corpus with planted junk -> cleaned by
the Chinese rules -> tokenizer -> .bin/.idx -> a few training iterations and the held-out perplexity."""

import json
import os
import subprocess
import sys

import pytest

from megalite.data.indexed import IndexedDataset
from tests.conftest import REPO


def test_clean_and_tokenize_zh_example(tmp_path):
    pytest.importorskip("jieba")
    env = dict(os.environ, SKIP_SETUP="1", WORK=str(tmp_path), DOCS="400", VOCAB="4000", ITERS="4",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    proc = subprocess.run(["bash", "examples/clean_and_tokenize_zh.sh"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.load(open(tmp_path / "cleaned" / "report.json"))
    steps = {r["step"]: r for r in report["steps"]}
    assert steps["03-gopher_repetition"]["counters"] == {"rules=zh": steps["03-gopher_repetition"]["docs_in"]}
    for step in ("02-language", "03-gopher_repetition", "04-gopher_quality", "06-exact_dedup", "07-minhash_dedup"):
        assert steps[step]["removed"] > 0, step
    assert steps["08-pii"]["counters"]["chinese_ids"] > 0
    kept = report["documents_out"]
    assert kept > 0.5 * 400 * 0.7  # most of the real help pages are kept
    assert len(IndexedDataset(str(tmp_path / "tokens" / "help_text_document"))) == kept
    cpt = json.load(open(tmp_path / "tokenizer" / "chars_per_token.json"))["chars_per_token"]
    assert cpt["zh"]["chars_per_token"] > 1.0
    assert "held-out (test split) perplexity after 4 iterations:" in proc.stdout
