"""Megatron-LM launch scripts run as they are (scaled down), every flag in them is documented, and
the Megatron flags that change training do what Megatron's do."""

import os
import re
import socket
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from megalite import megatron_flags
from megalite.config import Config, build_parser, flag_helps, parse_config, validate
from megalite.data.indexed import IndexedDataset
from megalite.data.preprocess import PreprocessConfig, TokenizerSpec, preprocess
from megalite.megatron_flags import FLAGS, markdown
from tests.conftest import REPO, english_documents, read_metrics, write_jsonl

SCRIPTS = {"gpt3": "examples/megatron/train_gpt3_175b_distributed.sh",
           "llama3": "examples/megatron/train_llama3_8b_h100_fp8.sh"}
TORCHRUN_FLAGS = {"--nproc_per_node", "--nnodes", "--node_rank", "--master_addr", "--master_port"}


def script_flags(path):
    text = open(os.path.join(REPO, path)).read()
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*", text)) - TORCHRUN_FLAGS


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_script(name, folder, *args):
    """Start a launch script as upstream says: from a folder holding pretrain_gpt.py, torchrun on PATH."""
    (folder / "pretrain_gpt.py").symlink_to(os.path.join(REPO, "pretrain_gpt.py"))
    env = {**os.environ, "PYTHONPATH": REPO, "MASTER_PORT": str(free_port()),
           "PATH": os.path.dirname(os.sys.executable) + os.pathsep + os.environ["PATH"]}
    return subprocess.Popen(["bash", os.path.join(REPO, SCRIPTS[name]), *map(str, args)], cwd=folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc):
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    return err


@pytest.fixture(scope="module")
def gpt2_data(tmp_path_factory):
    """GPT-2 BPE vocab.json / merges.txt and a corpus preprocessed with them, as the GPT-3 script takes."""
    from tokenizers import ByteLevelBPETokenizer

    out = tmp_path_factory.mktemp("gpt2")
    docs = english_documents()[:300]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(docs, vocab_size=400, special_tokens=["<|endoftext|>"])
    vocab, merges = bpe.save_model(str(out))
    preprocess(PreprocessConfig([str(write_jsonl(out / "docs.jsonl", [{"text": d} for d in docs]))],
                                str(out / "corpus"), TokenizerSpec("GPT2BPETokenizer", None, vocab, merges),
                                append_eod=True))
    return vocab, merges, str(out / "corpus_text_document")


@pytest.fixture(scope="module")
def launched(tmp_path_factory, gpt2_data):
    """Both scripts, run side by side: {name: (stderr, checkpoint folder)}."""
    gpt3, llama3 = tmp_path_factory.mktemp("gpt3"), tmp_path_factory.mktemp("llama3")
    procs = {"gpt3": (start_script("gpt3", gpt3, gpt3 / "ckpt", gpt3 / "tb", *gpt2_data), gpt3 / "ckpt"),
             "llama3": (start_script("llama3", llama3, llama3 / "ckpt" / "llama3_8b_fp8", llama3 / "tb" / "x"),
                        llama3 / "ckpt" / "llama3_8b_fp8")}
    return {name: (finish(proc), ckpt) for name, (proc, ckpt) in procs.items()}


def test_gpt3_launch_script_runs(launched):
    err, ckpt = launched["gpt3"]
    train, valid = read_metrics(ckpt / "metrics.jsonl")
    # --step-batch-size-schedule "0:2 64:4": 2 samples until 64 tokens (2 samples) are consumed, then 4
    assert [r["consumed_samples"] for r in train] == [2, 6]
    assert train[0]["lr"] == pytest.approx(6.0e-5)  # warm-up of 0.001 x the decay: done within the first step
    assert 6.0e-6 < train[1]["lr"] < 6.0e-5 and valid
    assert os.path.isdir(ckpt / "iter_0000002") and "note: --attention-backend" not in err


def test_llama3_launch_script_runs(launched):
    err, ckpt = launched["llama3"]
    train, _ = read_metrics(ckpt / "metrics.jsonl")
    # --train-samples 8 with --lr-warmup-samples 2 and --lr-decay-samples 8 (cosine), batches of 4
    assert [r["consumed_samples"] for r in train] == [4, 8]
    lr, min_lr = 0.00015, 0.00001
    assert train[0]["lr"] == pytest.approx(lr)
    assert train[1]["lr"] == pytest.approx(min_lr + (lr - min_lr) * 0.75)  # cos at (4 - 2) / (8 - 2) of the decay
    notes = [line for line in err.splitlines() if line.startswith("note: --")]
    accepted = {f for f in script_flags(SCRIPTS["llama3"]) if FLAGS[f].takes}
    assert sorted(line.split()[1] for line in notes if line.split()[1] in accepted) == sorted(accepted)  # one each
    assert "note: --sequence-parallel is off" in err  # TP 1, as Megatron


def test_docs_cover_every_flag_of_the_scripts():
    doc = open(os.path.join(REPO, "docs", "megatron_flags.md")).read()
    for name, path in SCRIPTS.items():
        flags = script_flags(path)
        assert len(flags) > 30, name
        missing = [f for f in sorted(flags) if f"| `{f}` |" not in doc]
        assert not missing, f"{path}: not in docs/megatron_flags.md: {missing}"


def test_docs_are_generated_from_the_table():
    with open(os.path.join(REPO, "docs", "megatron_flags.md")) as f:
        assert f.read() == markdown(flag_helps()), "run: python tools/megatron_flags_doc.py"


def test_table_agrees_with_the_parser():
    ours = {o for a in build_parser(sections=("model", "parallel", "data", "training", "logging", "checkpoint"))
            ._actions for o in a.option_strings if not a.dest.startswith("megatron:")}
    for flag, f in FLAGS.items():
        assert (flag in ours) == (f.takes is None), flag  # ours, or parsed by the table: never both
    fields = {name for section in Config().to_dict().values() for name in section}
    for flag, f in megatron_flags.PARSED.items():
        assert f.note and set(f.sets) <= fields, flag


def test_mapped_flags_in_yaml_and_choices(tmp_path, capsys):
    (tmp_path / "m.yaml").write_text("use-flash-attn: true\nmanual-gc: true\nrecompute_activations: true\n")
    cfg = parse_config(["--config", str(tmp_path / "m.yaml")], tool="pretrain_gpt.py")
    assert (cfg.model.attention_backend, cfg.training.recompute_granularity) == ("flash_attn", "selective")
    assert "note: --manual-gc (accepted)" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a value that would make the note untrue
        parse_config(["--dataloader-type", "cyclic"], tool="pretrain_gpt.py")
    assert "invalid choice: 'cyclic'" in capsys.readouterr().err


def test_unknown_flag_is_one_line_with_the_closest_names(capsys):
    with pytest.raises(SystemExit) as e:
        parse_config(["--num-layers", "2", "--lr-warmup-fractoin", "0.01"], tool="pretrain_gpt.py")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usage" not in err
    assert "unrecognized argument --lr-warmup-fractoin; did you mean --lr-warmup-fraction" in err
    with pytest.raises(SystemExit):  # no abbreviations (Megatron allows none)
        parse_config(["--num-layer", "2"], tool="pretrain_gpt.py")
    assert "unrecognized argument --num-layer; did you mean --num-layers" in capsys.readouterr().err


def test_sample_flags_need_train_samples():
    cfg = parse_config(["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length",
                        "16", "--mock-data", "--vocab-size", "64", "--train-iters", "2", "--lr-decay-samples", "8"])
    with pytest.raises(Exception, match="--lr-decay-samples goes with --train-samples"):
        validate(cfg)


def test_no_mmap_bin_files_reads_into_memory(gpt2_data, tmp_path):
    """--no-mmap-bin-files: the tokens are read once; the file changing later does not change them."""
    _, _, data = gpt2_data
    for ext in (".bin", ".idx"):
        (tmp_path / ("c" + ext)).write_bytes(open(data + ext, "rb").read())
    mapped, loaded = IndexedDataset(str(tmp_path / "c")), IndexedDataset(str(tmp_path / "c"), mmap=False)
    first = loaded[0].copy()
    assert (mapped[0] == first).all() and not isinstance(loaded._bin, __import__("numpy").memmap)
    with open(tmp_path / "c.bin", "r+b") as f:
        f.write(b"\xff" * 8)
    assert (loaded[0] == first).all() and not (mapped[0] == first).all()


def test_layernorm_1p_exports_the_scale(launched, tmp_path):
    """--apply-layernorm-1p stores each norm's scale minus 1 (so the Llama script's norms start at 0);
    the HF export writes the scale itself."""
    from megalite.hf.convert import export_hf
    from megalite.posttrain.lora_io import full_model_state

    _, ckpt = launched["llama3"]
    state, args = full_model_state(str(ckpt))
    assert args["model"]["apply_layernorm_1p"]
    export_hf(str(ckpt), str(tmp_path / "hf"), dtype="fp32")
    hf = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert torch.equal(hf["model.norm.weight"], state["final_norm.weight"].float() + 1)
    assert torch.equal(hf["model.layers.0.input_layernorm.weight"], state["layers.0.input_norm.weight"].float() + 1)


def tiny(*extra):
    return validate(parse_config(["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
                                  "--seq-length", "16", "--mock-data", "--vocab-size", "64", "--micro-batch-size", "2",
                                  "--num-workers", "0", "--log-interval", "1", "--eval-iters", "0", "--lr", "1e-2",
                                  "--hidden-dropout", "0", "--attention-dropout", "0", *extra], tool="pretrain_gpt.py"))


def test_one_iteration_moves_the_weights_and_decoupled_lr():
    """--train-iters 1 trains (its only step runs at --lr, not at lr 0); --decoupled-lr gives the input
    embedding and output layer their own lr; --apply-layernorm-1p norms are stored as scale - 1, from 0."""
    from megalite.parallel import state
    from megalite.training.trainer import Trainer

    trainer = Trainer(tiny("--train-iters", "1", "--decoupled-lr", "3e-2", "--untie-embeddings-and-output-weights",
                           "--apply-layernorm-1p"), torch.device("cpu"))
    try:
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        assert not before["final_norm.weight"].any()
        trainer.train()
        moved = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
        assert moved == set(before)
        lrs = {g["lr"] for g in trainer.optimizer.adam.param_groups if g["decoupled"]}, \
            {g["lr"] for g in trainer.optimizer.adam.param_groups if not g["decoupled"]}
        assert lrs == ({3e-2}, {1e-2})
        decoupled = {id(p) for g in trainer.optimizer.adam.param_groups if g["decoupled"] for p in g["params"]}
        assert len(decoupled) == 2  # embedding.weight and output_layer.weight (their fp32 masters)
    finally:
        state.destroy()


def test_grad_reduce_in_bf16_rounds_the_sum(tmp_path):
    """--grad-reduce-in-bf16: the data-parallel reduction runs in bf16; the fp32 gradients hold its result."""
    import torch.distributed as dist

    from megalite.parallel.data_parallel import GradBuffer

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        group = dist.new_group([0])
        sums = []
        for dtype in (torch.float32, torch.bfloat16):
            w = torch.nn.Parameter(torch.zeros(3))
            buf = GradBuffer([w], group, overlap=False, reduce_dtype=dtype)
            (w * torch.tensor([1.001, 2.0, 3.0])).sum().backward()
            buf.finish_sync()
            sums.append(w.main_grad.clone())
        assert sums[0][0] == pytest.approx(1.001) and sums[1][0] == 1.0 and sums[1].dtype == torch.float32
    finally:
        dist.destroy_process_group()
