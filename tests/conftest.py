import json
import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():
    # Without CUDA the Triton kernels run under Triton's interpreter, which has to be chosen
    # before anything imports triton: peft does at import, so a test module that imports it
    # at collection would otherwise leave test_kernels with uninterpreted triton.language.
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Torch on one thread in the test process and the scripts it launches: the tests' tiny models
# gain nothing from a second thread, and on a shared 2-core machine it mostly waits for the
# other users (20 steps of tiny_model_args: 1 s on one thread, 10 s on two, at load 12).
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

from tests.tokenizers_zoo import zoo  # noqa: E402, F401 (a fixture: the tokenizers equality tests run with)


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


def run_main(script, *args, check=True):
    """Run a repo script's main() in this process as its command line does (run_tool: the
    ``error:`` line and exit status), without the seconds a new Python spends importing torch
    and transformers; returns a CompletedProcess. Keep a real run_tool() launch of each script
    too: only that sees what a fresh interpreter prints."""
    import contextlib
    import importlib
    import io

    from megalite.utils.cli import run_tool as top

    main = importlib.import_module(script[: -len(".py")].replace("/", ".")).main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            top(main, list(args))
        except SystemExit as e:
            code = e.code
    proc = subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"{args} failed ({code}):\n{proc.stdout}\n{proc.stderr}")
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


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory, english_jsonl, spm_model):
    """pydoc's English text tokenized with the 1k-vocab test tokenizer: (data prefix, model)."""
    from megalite.data.preprocess import PreprocessConfig, TokenizerSpec, preprocess

    out = tmp_path_factory.mktemp("tiny_corpus")
    preprocess(PreprocessConfig([english_jsonl], str(out / "pydoc"), TokenizerSpec("SentencePieceTokenizer", spm_model),
                                append_eod=True))
    return str(out / "pydoc_text_document"), spm_model


def tiny_model_args(data_prefix, tokenizer_model, **overrides):
    """Flags for a ~0.2M-parameter Llama-style run on the tiny corpus; overrides win
    (value None drops a flag, True makes it a bare switch)."""
    args = {
        "num-layers": 2, "hidden-size": 64, "num-attention-heads": 4, "group-query-attention": True,
        "num-query-groups": 2, "seq-length": 32, "normalization": "RMSNorm", "position-embedding-type": "rope",
        "swiglu": True, "disable-bias-linear": True, "hidden-dropout": 0.0, "attention-dropout": 0.0,
        "data-path": data_prefix, "tokenizer-type": "SentencePieceTokenizer", "tokenizer-model": tokenizer_model,
        "micro-batch-size": 4, "global-batch-size": 8, "train-iters": 10, "lr": 3e-3, "min-lr": 3e-4,
        "lr-warmup-iters": 2, "log-interval": 1, "eval-interval": 1000, "eval-iters": 2, "num-workers": 0,
        "seed": 7, "split": "90,5,5",
    }
    args.update({k.replace("_", "-"): v for k, v in overrides.items()})
    argv = []
    for k, v in args.items():
        if v is None or v is False:
            continue
        argv.append(f"--{k}")
        if v is not True:
            argv.extend(str(x) for x in (v if isinstance(v, (list, tuple)) else [v]))
    return argv


def to_argv(settings: dict) -> list:
    """Command-line flags from {setting: value}: True is a bare switch, None / False are left out,
    a list gives one flag with several values."""
    argv = []
    for k, v in settings.items():
        if v is None or v is False:
            continue
        argv.append("--" + k.replace("_", "-"))
        if v is not True:
            argv += [str(x) for x in v] if isinstance(v, (list, tuple)) else [str(v)]
    return argv


def read_metrics(path):
    """(train records, eval records) from a --metrics-file."""
    rows = [json.loads(line) for line in open(path)]
    return [r for r in rows if "lm_loss" in r], [r for r in rows if "split" in r]


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module, whatever the session's setting (see the top of this file)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_runs_match(expected, got, keys, rel=1e-5, abs=1e-6):
    """Two runs' per-iteration metrics (read_metrics rows) agree on ``keys`` within the tolerances; a
    key missing from an expected row (a metric logged on some steps only) must be missing from ``got``'s."""
    import pytest

    assert len(got) == len(expected)
    for a, b in zip(expected, got):
        for key in keys:
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=rel, abs=abs), (key, a["iteration"])
            else:
                assert key not in b, (key, a["iteration"])


def once_per_settings(make):
    """``get(**settings)``: ``make(**settings)``, computed once per distinct settings (a module's
    one-process references, shared by the layouts compared with them)."""
    runs = {}

    def get(**settings):
        key = tuple(sorted(settings.items()))
        if key not in runs:
            runs[key] = make(**settings)
        return runs[key]

    return get

