"""One --load for every tool: a megalite checkpoint and a local Hugging Face folder work alike in
pretrain_gpt.py --finetune, sft_gpt.py, dpo_gpt.py, eval_gpt.py, tools/generate.py, tools/score.py
and tools/convert_checkpoint.py, with no model, tokenizer or sequence flags; a --load that names
nothing is one error in each; an empty folder starts from scratch only as its own --save."""

import json

import pytest

from megalite.errors import MegaliteError
from megalite.eval.cli import main as eval_main
from tests.conftest import read_metrics, tiny_model_args, write_jsonl
from tools.convert_checkpoint import main as convert_main
from tools.generate import main as generate_main
from tools.score import main as score_main

SHORT = ["--train-iters", "1", "--micro-batch-size", "2", "--global-batch-size", "2", "--lr-warmup-iters", "0",
         "--log-interval", "1", "--eval-iters", "0", "--num-workers", "0", "--seed", "3"]
PAIRS = [{"prompt": f"Question {i}: what does def do?", "chosen": " It defines a function.",
          "rejected": " It deletes files."} for i in range(4)]


def pretrain_main(argv):
    from pretrain_gpt import main

    return main(argv)


def sft_main(argv):
    from sft_gpt import main

    return main(argv)


def dpo_main(argv):
    from dpo_gpt import main

    return main(argv)


@pytest.fixture(scope="module")
def loads(tmp_path_factory, tiny_corpus, one_thread):
    """A tiny base checkpoint, its HF export, a reward model trained from the export, and its export."""
    from megalite.data.demo_sft import instruction_pairs

    root = tmp_path_factory.mktemp("loads")
    pretrain_main(tiny_model_args(*tiny_corpus, seq_length=64, train_iters=2, save=str(root / "base"),
                                  eval_iters=0))
    convert_main(["--to-hf", "--load", str(root / "base"), "--save", str(root / "hf"), "--dtype", "fp32"])
    files = {"sft": write_jsonl(root / "sft.jsonl", instruction_pairs()[:8]),
             "pairs": write_jsonl(root / "pairs.jsonl", PAIRS),
             "text": write_jsonl(root / "held_out.jsonl", [{"text": "The class statement defines a class."}])}
    dpo_main(["--pref-method", "rm", "--load", str(root / "hf"), "--pref-data", files["pairs"],
              "--save", str(root / "rm"), *SHORT])
    convert_main(["--to-hf", "--load", str(root / "rm"), "--save", str(root / "rm_hf"), "--dtype", "fp32"])
    return {"root": root, "corpus": tiny_corpus[0], "tokenizer": tiny_corpus[1], **files}


def first_loss(metrics):
    return read_metrics(metrics)[0][0]["lm_loss"]


def test_each_tool_takes_a_checkpoint_or_an_hf_folder_alike(loads, capsys):
    """The same model behind both: equal first losses, perplexities, generations and scores."""
    root = loads["root"]
    results = {}
    for kind in ("base", "hf"):
        load = str(root / kind)
        out = {}
        for name, main, data in (("pretrain", pretrain_main, ["--finetune", "--data-path", loads["corpus"]]),
                                 ("sft", sft_main, ["--sft-data", loads["sft"]]),
                                 ("dpo", dpo_main, ["--pref-data", loads["pairs"]])):
            metrics = str(root / f"{kind}_{name}.jsonl")
            main(["--load", load, *data, *SHORT, "--metrics-file", metrics])
            out[name] = first_loss(metrics)
        capsys.readouterr()
        eval_main(["--load", load, "--perplexity", "--text-file", loads["text"]])
        generate_main(["--load", load, "--prompt", "The class", "--max-new-tokens", "4"])
        out["printed"] = capsys.readouterr().out.splitlines()[-3:]
        rm = str(root / ("rm" if kind == "base" else "rm_hf"))
        score_main(["--load", rm, "--input", loads["pairs"], "--output", str(root / f"{kind}_scored.jsonl")])
        out["scores"] = [json.loads(line)["score_chosen"] for line in open(root / f"{kind}_scored.jsonl")]
        results[kind] = out
    ckpt, hf = results["base"], results["hf"]
    for name in ("pretrain", "sft", "dpo"):
        assert hf[name] == pytest.approx(ckpt[name], rel=1e-5), name
    assert hf["printed"][0] == ckpt["printed"][0] and hf["printed"][0].startswith("overall: loss")
    assert hf["printed"][1:] == ckpt["printed"][1:] and hf["printed"][2].startswith("The class")
    assert hf["scores"] == pytest.approx(ckpt["scores"], abs=1e-4)
    convert_main(["--from-hf", "--load", str(root / "hf"), "--save", str(root / "imported")])
    with pytest.raises(MegaliteError, match=r"--from-hf --load .*base: a megalite checkpoint, not a Hugging Face"):
        convert_main(["--from-hf", "--load", str(root / "base"), "--save", str(root / "imported2")])


def test_a_load_that_names_nothing_is_one_error_in_every_tool(loads, tmp_path):
    typo = str(tmp_path / "bsae")
    message = rf"--load {typo}: no checkpoint found: no such file or folder"
    for main, rest in ((pretrain_main, ["--finetune", "--data-path", loads["corpus"]]),
                       (sft_main, ["--sft-data", loads["sft"]]),
                       (dpo_main, ["--pref-data", loads["pairs"]]),
                       (eval_main, ["--perplexity", "--text-file", loads["text"]]),
                       (generate_main, ["--prompt", "x"]),
                       (score_main, ["--input", loads["pairs"], "--output", str(tmp_path / "s.jsonl")]),
                       (convert_main, ["--to-hf", "--save", str(tmp_path / "out")]),
                       (convert_main, ["--from-hf", "--save", str(tmp_path / "out")])):
        with pytest.raises(MegaliteError, match=message):
            main(["--load", typo, *rest])


def test_an_empty_folder_starts_from_scratch_only_as_its_own_save(loads, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    data = ["--data-path", loads["corpus"], *SHORT]
    with pytest.raises(MegaliteError, match=rf"--load {empty} --finetune: no checkpoint to fine-tune from"):
        pretrain_main(["--load", str(empty), "--finetune", "--save", str(empty), *data])
    with pytest.raises(MegaliteError, match=rf"--load {empty}: no checkpoint found: neither a megalite checkpoint"):
        pretrain_main(["--load", str(empty), "--save", str(tmp_path / "elsewhere"), *data])
    pretrain_main(tiny_model_args(loads["corpus"], loads["tokenizer"], train_iters=1, eval_iters=0, load=str(empty),
                                  save=str(empty)))
    assert f"--load {empty}: no checkpoint yet; starting from scratch" in capsys.readouterr().out
    assert (empty / "latest_checkpointed_iteration.txt").read_text() == "1"


def test_post_training_without_save_says_nothing_is_kept(loads, capsys):
    sft_main(["--load", str(loads["root"] / "base"), "--sft-data", loads["sft"], *SHORT])
    err = capsys.readouterr().err
    assert "warning: sft_gpt.py without --save: the trained weights will not be kept\n" in err


def test_a_stock_task_without_network_is_one_line(loads, tmp_path):
    """No hub (an unreachable proxy, an empty datasets cache): one line naming the task and the way to
    local files, at once (no retries)."""
    import os
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    dead = "http://127.0.0.1:9"
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("HF_", "NO_PROXY"))}
    env.update(HTTPS_PROXY=dead, HTTP_PROXY=dead, ALL_PROXY=dead, https_proxy=dead, http_proxy=dead,
               HF_HOME=str(tmp_path / "hf_home"), HF_HUB_ETAG_TIMEOUT="2", HF_HUB_DOWNLOAD_TIMEOUT="2")
    start = time.time()
    proc = subprocess.run([sys.executable, "eval_gpt.py", "--load", str(loads["root"] / "base"), "--tasks",
                           "hellaswag", "--limit", "2"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: lm-eval task hellaswag: its data is not in the local datasets cache")
    assert "--include-path" in proc.stderr and time.time() - start < 60
