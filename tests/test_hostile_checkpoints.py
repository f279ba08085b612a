"""Checkpoints and exports meet folders megalite did not make (issue 19, items 4, 5, 6, 8, 9, 13).

Each test asserts what a user notices: the one ``error: ...`` line and the exit code, and for
the data-loss items that every byte in the folders involved is still there afterwards."""

import hashlib
import json
import os
import resource
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from megalite.config import parse_config
from megalite.training.trainer import pretrain
from megalite.utils.cli import run_tool
from tests.conftest import REPO, tiny_model_args
from tools.convert_checkpoint import main as convert

TRACKER = "latest_checkpointed_iteration.txt"


def tree(path) -> dict:
    """Every file and folder under ``path``: {relative path: sha256 of its bytes, or 'dir'}."""
    out = {}
    for root, dirs, files in os.walk(path):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), path)] = "dir"
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                out[os.path.relpath(os.path.join(root, f), path)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def tool_error(capsys, main, *argv) -> str:
    """Run a tool's main as its command line does; its stderr, which must end in one error line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as failed:
        run_tool(main, [str(a) for a in argv])
    err = capsys.readouterr().err
    assert failed.value.code == 1, err
    return err


def run_script(*args, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True, env=env, **kw)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory, tiny_corpus):
    """A --save folder whose tracker names iteration 2; copy it before changing anything."""
    ck = tmp_path_factory.mktemp("run") / "ck"
    pretrain(parse_config(tiny_model_args(*tiny_corpus, save=str(ck), train_iters=2, eval_iters=0)))
    return str(ck)


def copy_of(run_folder, tmp_path, name="ck") -> str:
    return shutil.copytree(run_folder, str(tmp_path / name))


def train_args(tiny_corpus, save, **kw):
    return tiny_model_args(*tiny_corpus, save=save, eval_iters=0, **kw)


# -- item 4 ------------------------------------------------------------------------------------
def test_4_export_refuses_a_folder_it_did_not_write_and_replaces_its_own(tmp_path, run_folder, capsys):
    ck = copy_of(run_folder, tmp_path)
    hf = tmp_path / "hf"
    (hf / "notes").mkdir(parents=True)
    (hf / "README.md").write_text("my model card\n")
    (hf / "notes" / "a.txt").write_text("keep me\n")
    (tmp_path / "hf.tmp").mkdir()  # the old tool emptied this name too
    (tmp_path / "hf.tmp" / "x.bin").write_bytes(b"\x00\x01")
    before = tree(tmp_path)
    for way in ("--to-hf", "--to-peft"):
        err = tool_error(capsys, convert, way, "--load", ck, "--save", hf)
        assert err == (f"error: --save {hf} holds files that are not an earlier megalite export (README.md, notes/); "
                       "choose a new or empty folder\n")
    err = tool_error(capsys, convert, "--to-hf", "--load", ck, "--save", ck)  # the checkpoint itself
    assert err == (f"error: --save {ck} holds files that are not an earlier megalite export (iter_0000002/, "
                   f"{TRACKER}, metrics.jsonl); choose a new or empty folder\n")
    assert tree(tmp_path) == before
    # a new folder, then that export again: replaced whole, nothing beside it touched
    out = tmp_path / "export"
    for _ in range(2):
        convert(["--to-hf", "--load", ck, "--save", str(out), "--dtype", "fp32"])
    assert {"config.json", "model.safetensors", ".megalite_export.json"} <= set(os.listdir(out))
    after = tree(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("export")} == before


# -- item 5 ------------------------------------------------------------------------------------
def test_5_save_holding_a_later_iteration_is_refused_and_retention_keeps_the_tracked(tmp_path, run_folder,
                                                                                     tiny_corpus, capsys):
    from pretrain_gpt import main

    save = copy_of(run_folder, tmp_path)
    before = tree(save)
    err = tool_error(capsys, main, *train_args(tiny_corpus, save, train_iters=1, keep_last=1))
    assert err.splitlines()[-1] == (f"error: --save {save} already holds iteration 2, later than this run's iteration "
                                    f"0: resume that run with --load {save} (without --finetune), or choose another "
                                    "--save")
    assert tree(save) == before
    # resumed, two saves with --keep-last 1: only the newest, tracked folder is left
    pretrain(parse_config(train_args(tiny_corpus, save, load=save, train_iters=4, save_interval=1, keep_last=1)))
    assert open(os.path.join(save, TRACKER)).read() == "4"
    assert sorted(d for d in os.listdir(save) if d.startswith("iter_")) == ["iter_0000004"]


# -- item 6 ------------------------------------------------------------------------------------
def test_6_second_writer_is_refused_and_a_dead_writers_lock_is_taken_over(tmp_path, run_folder, tiny_corpus, capsys):
    from megalite.utils.lock import FolderLock

    save = copy_of(run_folder, tmp_path)
    argv = train_args(tiny_corpus, save, load=save, train_iters=3)
    before = tree(save)
    lock = FolderLock(save, "--save")  # a live run (this process) holds it
    try:
        # read through the lock's own descriptor: closing any other one drops a POSIX lock
        held = os.pread(lock.fd, 4096, 0)
        proc = run_script("pretrain_gpt.py", *argv)
        assert proc.returncode == 1
        assert proc.stderr.splitlines()[-1] == (
            f"error: --save {save} is in use by another run (pid {os.getpid()} on {socket.gethostname()}, since "
            f"{json.loads(held)['since']}); wait for it to end or choose another --save")
        assert os.pread(lock.fd, 4096, 0) == held
    finally:
        lock.release()
    assert tree(save) == before
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(os.path.join(save, ".megalite.lock"), "w") as f:  # left by a writer killed on this host
        json.dump({"host": socket.gethostname(), "pid": dead.pid, "since": "2026-01-01 00:00:00"}, f)
    proc = run_script("pretrain_gpt.py", *argv)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (f"warning: {save}/.megalite.lock: taking over the stale lock of pid {dead.pid} on "
            f"{socket.gethostname()} (no longer running)") in proc.stderr.splitlines()
    assert open(os.path.join(save, TRACKER)).read() == "3"
    assert not os.path.exists(os.path.join(save, ".megalite.lock"))  # released at the end
    with open(os.path.join(save, ".megalite.lock"), "w") as f:  # left by a job requeued from another node
        json.dump({"host": "node-7", "pid": 4242, "since": "2026-01-01 00:00:00"}, f)
    lock = FolderLock(save, "--save")
    lock.release()
    assert ("warning: {save}/.megalite.lock: taking over the stale lock of pid 4242 on node-7 (no longer running; "
            "if that run is still going, this filesystem does not share locks between machines: stop one)"
            ).format(save=save) in capsys.readouterr().err.splitlines()


# -- item 8 ------------------------------------------------------------------------------------
def test_8_from_hf_refuses_a_folder_that_is_not_empty(tmp_path, run_folder, capsys):
    from megalite.hf.convert import export_hf

    hf = export_hf(run_folder, str(tmp_path / "hf"), dtype="fp32")
    save = copy_of(run_folder, tmp_path)
    before = tree(tmp_path)
    for way in ("--from-hf", "--reshard"):
        err = tool_error(capsys, convert, way, "--load", hf if way == "--from-hf" else save, "--save", save)
        assert err == (f"error: --save {save} is not empty (it holds iter_0000002/, {TRACKER}, metrics.jsonl); "
                       "choose a new or empty folder\n")
    assert tree(tmp_path) == before
    (tmp_path / "empty").mkdir()
    assert convert(["--from-hf", "--load", hf, "--save", str(tmp_path / "empty")]) is None
    assert open(tmp_path / "empty" / TRACKER).read() == "0"


# -- item 9 ------------------------------------------------------------------------------------
class Crash(BaseException):
    """Stands for the process dying at this point (nothing after it runs)."""


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_9_a_save_cut_short_while_publishing_leaves_a_loadable_tracked_checkpoint(tmp_path, run_folder, exchange,
                                                                                  monkeypatch, capsys):
    """Re-saving the tracked iteration (a resumed run that saves at once) is cut at every rename
    and removal it makes: the next load always finds the tracked iteration complete (the old or
    the new copy, checksums verified); with two renames, the old copy is put back with a message."""
    from megalite.checkpoint.layout import find_checkpoint, load_file, rank_file
    from megalite.checkpoint.save import PendingSave
    from megalite.parallel import state
    from megalite.utils import atomic

    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    state.initialize()
    try:
        original = tree(os.path.join(run_folder, "iter_0000002"))
        payload = torch.load(os.path.join(run_folder, "iter_0000002", "mp_rank_00", "model_optim_rng.pt"),
                             weights_only=True)
        payload["consumed_samples"] = -1  # tells the new copy from the old
        outcomes, recovered = set(), 0
        for cut in range(10):
            root = copy_of(run_folder, tmp_path, f"cut{cut}")
            steps = []

            def step(real):
                def wrapped(*a, **k):
                    steps.append(real.__name__)
                    if len(steps) == cut + 1:
                        raise Crash
                    return real(*a, **k)
                return wrapped

            pending = PendingSave(root, 2, os.path.join(root, ".tmp_iter_0000002"), None)
            pending.write({rank_file(pending.tmp): payload})
            with monkeypatch.context() as m:
                for module, name in ((os, "rename"), (os, "replace"), (shutil, "rmtree"), (atomic, "_exchange")):
                    m.setattr(module, name, step(getattr(module, name)))
                try:
                    pending.finish()
                    finished = True
                except Crash:
                    finished = False
            folder = find_checkpoint(root)  # the next run's load
            recovered += "recovered " in capsys.readouterr().err
            assert folder == os.path.join(root, "iter_0000002")
            consumed = load_file(rank_file(folder))["consumed_samples"]
            if consumed != -1:
                assert tree(folder) == original
            outcomes.add(consumed)
            if finished:
                break
        assert finished and outcomes == {16, -1}
        assert recovered == (0 if exchange else 1)
    finally:
        state.destroy()


# -- item 13 -----------------------------------------------------------------------------------
def test_13_os_errors_are_one_line_and_a_full_disk_keeps_the_last_checkpoint(tmp_path, run_folder, tiny_corpus,
                                                                             capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")
    err = tool_error(capsys, convert, "--to-hf", "--load", run_folder, "--save", blocker / "hf")
    assert err == f"error: cannot write {blocker / 'hf'}: Not a directory\n"
    err = tool_error(capsys, convert, "--to-hf", "--load", run_folder, "--save", blocker)
    assert err == f"error: --save {blocker} is a file, not a folder\n"
    try:  # root ignores file modes; sysfs refuses even root a new entry
        os.mkdir("/sys/megalite_probe")
        os.rmdir("/sys/megalite_probe")
        denied = None
    except OSError as e:
        denied = e.strerror
    if denied:
        err = tool_error(capsys, convert, "--to-hf", "--load", run_folder, "--save", "/sys/megalite_export")
        assert err == f"error: cannot write /sys/megalite_export: {denied}\n"
    # the disk fills during a save (a file-size limit: the same failed write() a full disk gives)
    save = copy_of(run_folder, tmp_path)
    before = tree(save)
    limit = os.path.getsize(os.path.join(save, "iter_0000002", "mp_rank_00", "model_optim_rng.pt")) // 2
    argv = train_args(tiny_corpus, save, load=save, train_iters=3, metrics_file=tmp_path / "metrics.jsonl")
    proc = run_script("pretrain_gpt.py", *argv,
                      preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == (f"error: cannot write {save}/.tmp_iter_0000003/mp_rank_00/"
                                            "model_optim_rng.pt: File too large")
    after = tree(save)
    assert {k: after.get(k) for k in before} == before  # every byte that was there is still there
    assert open(os.path.join(save, TRACKER)).read() == "2"


def test_13_corrupt_checksums_is_one_line_and_missing_checksums_warns(tmp_path, run_folder, capsys):
    ck = copy_of(run_folder, tmp_path)
    index = os.path.join(ck, "iter_0000002", "checksums.json")
    with open(index, "w") as f:
        f.write('{"mp_rank_00/model_optim_rng.pt": {"bytes": 12')  # cut short
    err = tool_error(capsys, convert, "--to-hf", "--load", ck, "--save", tmp_path / "hf")
    assert err == (f"error: {index}: corrupt, not JSON (Expecting ',' delimiter: line 1 column 47 (char 46)); "
                   "the checkpoint's files cannot be verified\n")
    os.remove(index)
    assert convert(["--to-hf", "--load", ck, "--save", str(tmp_path / "hf")]) is None
    assert (f"warning: {os.path.join(ck, 'iter_0000002')} has no checksums.json; its files are loaded unverified"
            in capsys.readouterr().err.splitlines())
