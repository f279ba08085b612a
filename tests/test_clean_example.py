"""examples/clean_and_tokenize.sh, small: raw WARC + JSONL + text -> cleaned, deduplicated JSONL
-> tokenizer -> .bin/.idx whose documents are exactly the ones the cleaning kept."""

import json
import os
import subprocess
import sys

from megalite.data.indexed import IndexedDataset
from tests.conftest import REPO


def test_clean_and_tokenize_example(tmp_path):
    env = dict(os.environ, SKIP_SETUP="1", WORK=str(tmp_path), DOCS="200", PAGES="20", VOCAB="600",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    proc = subprocess.run(["bash", "examples/clean_and_tokenize.sh"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.load(open(tmp_path / "cleaned" / "report.json"))
    steps = {r["step"]: r for r in report["steps"]}
    assert steps["02-extract"]["docs_out"] == steps["02-extract"]["docs_in"]  # every WARC page had an article
    assert steps["09-exact_dedup"]["removed"] > 0 and steps["10-minhash_dedup"]["removed"] > 0
    assert steps["04-language"]["removed"] > 0 and steps["05-gopher_repetition"]["removed"] > 0
    tokens = IndexedDataset(str(tmp_path / "tokens" / "web_text_document"))
    assert len(tokens) == report["documents_out"] > 100
    assert os.path.exists(tmp_path / "tokenizer" / "tokenizer.model")
