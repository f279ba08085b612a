"""The docs cannot drift from the code: every shell command in README.md's and docs/*.md's fenced
code blocks is run, unless the Markdown says why not just before the block:

    <!-- not run: REASON -->     (a GPU, several nodes, a download, minutes of work)
    <!-- help only: REASON -->   (a usage pattern: each script's --help must list every flag used)

A block is a command block when it is marked bash/sh/shell/console, or when unmarked one of its
lines starts a command (python, torchrun, bash, pip, ...): such a block cannot escape the rule by
losing its language tag. Unmarked blocks run in a temporary folder holding links to the
repository's files and what their commands read, made small: ``ckpt`` (a tiny checkpoint: 1024 tokens of context,
as the docs' windows need), ``data/web_text_document`` and ``data/code_text_document``,
``held_out.jsonl`` (a few documents each). ``python``
commands run as python would run them (``runpy`` with their argv, in this process, which saves
a second of start-up each); anything else runs in bash.
"""

import contextlib
import glob
import io
import json
import os
import re
import runpy
import shlex
import subprocess
import sys
from typing import List, NamedTuple, Optional, Tuple

import pytest

from tests.conftest import REPO, tiny_model_args, write_jsonl

MARKER = re.compile(r"^<!--\s*(not run|help only):\s*(\S.*?)\s*-->$")
PROGRAMS = ("python", "torchrun", "bash", "pip", "sbatch", "srun", "sh", "cd", "export")
SHELL_TAGS = ("bash", "sh", "shell", "console")


class Block(NamedTuple):
    where: str  # file:line of the opening fence
    tag: str
    text: str
    marker: Optional[Tuple[str, str]]  # ("not run" | "help only", reason)


def doc_files() -> List[str]:
    return [os.path.join(REPO, "README.md")] + sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))


def blocks(path: str) -> List[Block]:
    lines = open(path, encoding="utf-8").read().splitlines()
    out, i = [], 0
    while i < len(lines):
        fence = re.match(r"^(\s*)```(\S*)", lines[i])
        if not fence:
            i += 1
            continue
        start, before = i, next((line.strip() for line in reversed(lines[:i]) if line.strip()), "")
        i += 1
        while i < len(lines) and not lines[i].strip().startswith("```"):
            i += 1
        marker = MARKER.match(before)
        out.append(Block(f"{os.path.relpath(path, REPO)}:{start + 1}", fence.group(2).lower(),
                         "\n".join(lines[start + 1:i]), marker.groups() if marker else None))
        i += 1
    return out


def commands(text: str) -> List[List[str]]:
    """Each command of a block as argv (continuation lines joined, comments dropped)."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        argv = shlex.split(line, comments=True)
        if argv:
            out.append(argv)
    return out


def is_command_block(b: Block) -> bool:
    if b.tag in SHELL_TAGS:
        return True
    return not b.tag and any(re.match(rf"^\s*({'|'.join(PROGRAMS)})\s", line) for line in b.text.splitlines())


def all_command_blocks() -> List[Block]:
    return [b for path in doc_files() for b in blocks(path) if is_command_block(b)]


def run_python(argv: List[str]) -> Tuple[int, str]:
    """``python ARGV`` as python runs it (a script path or ``-m module``), here; (exit code, output)."""
    out = io.StringIO()
    old_argv = sys.argv
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            if argv[0] == "-m":
                sys.argv = [argv[1], *argv[2:]]
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            else:
                sys.argv = list(argv)
                runpy.run_path(argv[0], run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old_argv
    return code, out.getvalue()


def script_of(argv: List[str]) -> List[str]:
    """The python script (or -m module) a python / torchrun command runs, as python's argv."""
    if argv[0] == "python":
        return argv[1:3] if argv[1] == "-m" else argv[1:2]
    return [next(a for a in argv if a.endswith(".py"))]  # torchrun [its flags] script.py ...


def flags(argv: List[str]) -> List[str]:
    """Every --flag of a command, including those inside [optional] brackets."""
    return sorted({m for a in argv for m in re.findall(r"(--[A-Za-z][\w-]*)", a)})


def test_every_command_block_is_marked_or_has_commands():
    """Markers say why in words; a marker on a block with no command is a mistake too."""
    found = all_command_blocks()
    assert len(found) > 20
    for b in found:
        assert commands(b.text), f"{b.where}: an empty command block"
    for path in doc_files():
        for b in blocks(path):
            assert b.marker is None or is_command_block(b), f"{b.where}: a marker on a block that is not commands"


def test_usage_patterns_use_only_flags_their_scripts_take():
    checked = 0
    for b in all_command_blocks():
        if b.marker is None or b.marker[0] != "help only":
            continue
        for argv in commands(b.text):
            if argv[0] not in ("python", "torchrun"):
                continue
            script = script_of(argv)
            rest = argv[argv.index(script[-1]) + 1:]  # torchrun's own flags come before the script
            while rest and re.fullmatch(r"[a-z]+", rest[0]):  # a subcommand (lm-eval's run) has its own help
                script, rest = script + rest[:1], rest[1:]
            with contextlib.chdir(REPO):
                code, text = run_python([*script, "--help"])
            assert code == 0, f"{b.where}: {' '.join(script)} --help failed:\n{text}"
            missing = [f for f in flags(rest) if not re.search(re.escape(f) + r"(?![\w-])", text)]
            assert not missing, f"{b.where}: {' '.join(script)} does not take {', '.join(missing)}"
            checked += 1
    assert checked >= 10


@pytest.fixture(scope="module")
def docs_folder(tmp_path_factory, english_jsonl, spm_model, one_thread):
    """The repository's files linked into a folder, beside the tiny inputs the docs' commands name."""
    from megalite.data.preprocess import PreprocessConfig, TokenizerSpec, preprocess
    from pretrain_gpt import main as pretrain

    root = tmp_path_factory.mktemp("docs_run")
    for name in os.listdir(REPO):
        if not name.startswith("."):
            os.symlink(os.path.join(REPO, name), root / name)
    texts = [json.loads(line)["text"] for line in open(english_jsonl)][:6]
    write_jsonl(root / "held_out.jsonl", [{"text": t} for t in texts[:2]])
    for name, part in (("web", texts[:3]), ("code", texts[3:])):
        source = write_jsonl(root / f"{name}.jsonl", [{"text": t} for t in part])
        preprocess(PreprocessConfig([source], str(root / "data" / name), TokenizerSpec("SentencePieceTokenizer",
                                                                                       spm_model), append_eod=True))
    pretrain(tiny_model_args(str(root / "data" / "web_text_document"), spm_model, seq_length=1024, train_iters=1,
                             eval_iters=0, micro_batch_size=1, global_batch_size=1, split="1,0,0",
                             save=str(root / "ckpt")))
    return root


def test_every_unmarked_command_runs(docs_folder):
    ran = []
    for b in all_command_blocks():
        if b.marker is not None:
            continue
        for argv in commands(b.text):
            with contextlib.chdir(docs_folder):
                if argv[0] == "python":
                    code, text = run_python(argv[1:])
                else:
                    proc = subprocess.run(["bash", "-c", shlex.join(argv)], capture_output=True, text=True)
                    code, text = proc.returncode, proc.stdout + proc.stderr
            assert code == 0, f"{b.where}: `{shlex.join(argv)}` failed ({code}):\n{text[-3000:]}"
            ran.append(argv)
    assert len(ran) >= 4
