"""The cleaning pipeline end to end: every document accounted for at every step, the same
output whatever the number of tasks or workers, resumable runs, every input format, bad
records and bad configs."""

import glob
import gzip
import io
import json
import os
import random
import subprocess
import sys

import pytest

from data_tools.clean.config import parse_config
from data_tools.clean.executor import run_pipeline
from data_tools.clean.plan import Plan
from data_tools.clean.readers import read_shard
from data_tools.sample_corpus import english_sentences, html_page, news_article, web_corpus, write_warc
from megalite.errors import MegaliteError
from tests.conftest import REPO, run_tool, write_jsonl

FULL_STEPS = ["url_filter", "extract", "normalize", {"language": {"languages": ["en"]}}, "gopher_repetition",
              "gopher_quality", "c4", "fineweb", "exact_dedup", "minhash_dedup", "pii", {"length": {"min_chars": 200}}]
QUIET = dict(log=lambda msg: None)


def lines(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def all_lines(pattern):
    return [r for p in sorted(glob.glob(pattern)) for r in lines(p)]


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """A raw corpus: two JSONL shards (gz, zst) of web documents with malformed records, a
    WARC of HTML pages and a folder of .txt files."""
    import zstandard

    folder = tmp_path_factory.mktemp("raw")
    docs = web_corpus(random.Random(3), 240)
    bad = ['{"id": "cut", "text": "no end', "[1, 2, 3]", '{"id": "no-text"}', '{"id": "num", "text": 42}', ""]
    recs = [json.dumps(d) for d in docs[:120]]
    with gzip.open(folder / "a.jsonl.gz", "wt") as f:
        f.write("\n".join(recs[:60] + bad + recs[60:]) + "\n")
    with open(folder / "b.jsonl.zst", "wb") as f:
        f.write(zstandard.ZstdCompressor().compress(("\n".join(json.dumps(d) for d in docs[120:]) + "\n").encode()))
    rng = random.Random(4)
    pages = [(f"https://www.example.org/{i}", html_page(rng, news_article(rng, english_sentences()), f"p{i}"))
             for i in range(6)]
    write_warc(str(folder / "pages.warc.gz"), pages + [pages[0]])  # one page crawled twice
    (folder / "notes").mkdir()
    for i in range(3):
        (folder / "notes" / f"n{i}.txt").write_text(news_article(rng, english_sentences()))
    return folder


def config(raw, out, steps=FULL_STEPS, **kw):
    return parse_config({"input": str(raw), "output": str(out), "steps": steps, **kw})


@pytest.fixture(scope="module")
def single(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "out"
    run_pipeline(config(raw, out), **QUIET)
    return out


def test_every_document_is_kept_or_rejected_with_a_reason(single):
    report = json.load(open(single / "report.json"))
    rows = report["steps"]
    assert [r["step"] for r in rows] == ["00-read", "01-url_filter", "02-extract", "03-normalize", "04-language",
                                         "05-gopher_repetition", "06-gopher_quality", "07-c4", "08-fineweb",
                                         "09-exact_dedup", "10-minhash_dedup", "11-pii", "12-length"]
    assert rows[0]["docs_in"] == 240 + 5 + 7 + 3 - 1  # records, pages, notes (the blank line is no record)
    for before, after in zip(rows, rows[1:]):
        assert after["docs_in"] == before["docs_out"], after["step"]
    for r in rows:
        rejected = all_lines(str(single / "rejected" / r["step"] / "*"))
        assert r["docs_in"] == r["docs_out"] + len(rejected) == r["docs_out"] + sum(r["reasons"].values()), r["step"]
        assert all(x["rejected_by"] == r["step"] and x["reason"] for x in rejected)
    kept = all_lines(str(single / "data" / "*"))
    assert len(kept) == rows[-1]["docs_out"] == report["documents_out"] > 50
    # the duplicate WARC page and planted copies went to dedup; foreign pages to language ID
    assert rows[9]["reasons"]["duplicate"] >= 1 and rows[10]["reasons"]["duplicate"] >= 1
    assert any(k.startswith("language=") for k in rows[4]["reasons"])
    assert rows[0]["reasons"] == {"bad JSON": 1, "not a JSON object": 1, "missing key 'text'": 1,
                                  "key 'text' is int, not a string": 1}
    table = open(single / "report.txt").read()
    assert "10-minhash_dedup" in table and "removed because" in table


def test_malformed_records_are_kept_with_their_place(single):
    bad = all_lines(str(single / "rejected" / "00-read" / "*"))
    assert {b["raw"] for b in bad} == {'{"id": "cut", "text": "no end', "[1, 2, 3]", '{"id": "no-text"}',
                                       '{"id": "num", "text": 42}'}
    assert all(b["source"].endswith("a.jsonl.gz") and b["line"] > 60 for b in bad)


def test_tasks_and_workers_give_the_same_output(raw, single, tmp_path):
    def data(out):
        return {os.path.basename(p): lines(p) for p in glob.glob(str(out / "data" / "*"))}

    # three tasks, stage by stage, as a scheduler with dependencies runs them
    cfg = config(raw, tmp_path / "tasks")
    for stage in [s.name for s in Plan(cfg).stages]:
        for task in range(3):
            run_pipeline(cfg, tasks=3, task_id=task, stage=stage, **QUIET)
    assert data(tmp_path / "tasks") == data(single)
    # two worker processes
    run_pipeline(config(raw, tmp_path / "workers"), workers=2, **QUIET)
    assert data(tmp_path / "workers") == data(single)


def test_concurrent_tasks_wait_for_each_other(raw, single, tmp_path):
    steps = ["gopher_repetition", "exact_dedup", "minhash_dedup"]
    cfg_path = tmp_path / "c.json"
    cfg_path.write_text(json.dumps({"input": str(raw), "output": str(tmp_path / "out"), "steps": steps}))
    tasks = [subprocess.Popen([sys.executable, "data_tools/run_pipeline.py", "--config", str(cfg_path), "--tasks",
                               "2", "--task-id", str(i), "--poll", "0.1"], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [t.communicate(timeout=120) for t in tasks]
    assert [t.returncode for t in tasks] == [0, 0], outputs
    assert "kept documents" in outputs[0][0]
    one = tmp_path / "one"
    run_pipeline(parse_config({"input": str(raw), "output": str(one), "steps": steps}), **QUIET)
    assert all_lines(str(tmp_path / "out" / "data" / "*")) == all_lines(str(one / "data" / "*"))


def test_an_interrupted_run_resumes(raw, tmp_path, monkeypatch):
    """A unit that crashes leaves no output and no marker; the re-run redoes only it."""
    (tmp_path / "flaky.py").write_text(
        "import os\n"
        "from data_tools.clean.steps.base import Step\n"
        "class Flaky(Step):\n"
        "    def __init__(self, flag):\n"
        "        super().__init__()\n"
        "        self.flag = flag\n"
        "    def process(self, doc):\n"
        "        if doc.id == 'web-200' and os.path.exists(self.flag):\n"
        "            raise RuntimeError('crash')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    flag = tmp_path / "crash-now"
    flag.write_text("")
    steps = [{"flaky:Flaky": {"flag": str(flag)}}, "gopher_quality", "exact_dedup"]
    cfg = config(raw, tmp_path / "out", steps=steps)
    with pytest.raises(RuntimeError, match="crash"):
        run_pipeline(cfg, **QUIET)
    plan = Plan(cfg)
    crashed = plan.shards.index("00001-b")
    assert os.path.exists(plan.layout.done("1-filter", plan.shards[0]))
    assert not os.path.exists(plan.layout.done("1-filter", plan.shards[crashed]))
    assert not glob.glob(str(tmp_path / "out" / "work" / "segment-0" / "00001-b*"))  # not even a temp file
    flag.unlink()
    messages = []
    run_pipeline(cfg, log=messages.append)
    assert f"1-filter: 1 of {len(plan.shards)} units already done, skipped" in messages
    run_pipeline(config(raw, tmp_path / "fresh", steps=steps), **QUIET)
    assert all_lines(str(tmp_path / "out" / "data" / "*")) == all_lines(str(tmp_path / "fresh" / "data" / "*"))
    with pytest.raises(Exception, match="another config"):
        run_pipeline(config(raw, tmp_path / "out", steps=["gopher_quality"]), **QUIET)


def test_warc_records_become_html_documents(tmp_path):
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    path = tmp_path / "crawl.warc.gz"
    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=True)
        for url, body, ctype in [("https://a.example/", "<html><body><p>Première page.</p></body></html>".encode(),
                                  "text/html; charset=utf-8"),
                                 ("https://b.example/", "<html><body><p>Zweite Seite: Grüße</p></body></html>"
                                  .encode("latin-1"), "text/html; charset=iso-8859-1"),
                                 ("https://c.example/x.png", b"\x89PNG....", "image/png")]:
            headers = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.1")
            w.write_record(w.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=headers))
        w.write_record(w.create_warc_record("https://a.example/", "request", payload=io.BytesIO(b"GET / HTTP/1.1")))
    docs = [d for items, _ in read_shard(str(path), "s", "text", "id") for d in items]
    assert [d.record["url"] for d in docs] == ["https://a.example/", "https://b.example/"]
    assert "Première page." in docs[0].text and "Grüße" in docs[1].text
    assert all(d.id.startswith("<urn:uuid:") and d.record["date"] for d in docs)
    with open(tmp_path / "broken.warc.gz", "wb") as f:
        f.write(open(path, "rb").read()[:300])
    with pytest.raises(Exception, match="broken.warc.gz"):
        list(read_shard(str(tmp_path / "broken.warc.gz"), "s", "text", "id"))


def test_parquet_datasets_and_text_inputs(tmp_path):
    import datasets

    rows = [{"text": news_article(random.Random(i), english_sentences()), "url": f"https://x/{i}"} for i in range(4)]
    datasets.Dataset.from_list(rows[:2]).to_parquet(str(tmp_path / "p.parquet"))
    datasets.Dataset.from_list(rows[2:]).save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "one.txt").write_text(rows[0]["text"])
    out = tmp_path / "out"
    run_pipeline(parse_config({"input": [str(tmp_path / "p.parquet"), str(tmp_path / "saved"), str(tmp_path / "txt")],
                               "output": str(out), "steps": ["gopher_quality"], "output_format": "jsonl"}), **QUIET)
    kept = all_lines(str(out / "data" / "*"))
    assert sorted(r["text"] for r in kept) == sorted([r["text"] for r in rows] + [rows[0]["text"]])
    assert {r["id"] for r in kept if "url" not in r} == {"one.txt"}


def test_user_step_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "mysteps.py").write_text(
        "from data_tools.clean.steps.base import Step\n"
        "class DropWith(Step):\n"
        "    def __init__(self, word):\n"
        "        super().__init__()\n"
        "        self.word = word\n"
        "    def process(self, doc):\n"
        "        return 'has_' + self.word if self.word in doc.text else None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    write_jsonl(tmp_path / "in.jsonl", [{"text": "keep me"}, {"text": "drop me please"}])
    out = tmp_path / "out"
    run_pipeline(parse_config({"input": str(tmp_path / "in.jsonl"), "output": str(out),
                               "steps": [{"mysteps:DropWith": {"word": "please"}}]}), **QUIET)
    assert [r["text"] for r in all_lines(str(out / "data" / "*"))] == ["keep me"]
    assert all_lines(str(out / "rejected" / "01-DropWith" / "*"))[0]["reason"] == "has_please"


def test_stages_run_in_order(raw, tmp_path):
    cfg = config(raw, tmp_path / "out", steps=["gopher_quality", "exact_dedup"])
    assert [s.name for s in Plan(cfg).stages] == ["1-filter", "2-exact_dedup-pairs", "3-exact_dedup-clusters",
                                                   "4-filter", "5-report"]
    with pytest.raises(MegaliteError, match="--stage 4-filter needs stage 3-exact_dedup-clusters finished first"):
        run_pipeline(cfg, stage="4", **QUIET)
    proc = run_tool("data_tools/run_pipeline.py", "--config", "examples/configs/clean.yaml", "--input", str(raw),
                    "--output", str(tmp_path / "o"), "--list-stages")
    assert proc.stdout.splitlines()[:2] == ["1-filter: 6 units", "2-exact_dedup-pairs: 1 units"]


@pytest.mark.parametrize("config_text,message", [
    ("input: x\noutput: y\nsteps: [nope]\n", "unknown step 'nope'"),
    ("input: x\noutput: y\nsteps: [{gopher_quality: {min_words: 3}}]\n", "unknown parameter(s) min_words"),
    ("output: y\n", "'input' is required"),
    ("input: x\noutput: y\nsteps: [{language: {threshold: 1.5}}]\n", "threshold must be in [0, 1)"),
    ("input: [x\n", "not valid YAML"),
    ("input: /no/such/place\noutput: y\n", "no such file, folder or glob match"),
])
def test_bad_configs_get_one_line_errors(tmp_path, config_text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(config_text)
    proc = run_tool("data_tools/run_pipeline.py", "--config", str(path), "--output", str(tmp_path / "o"), check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and message in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
