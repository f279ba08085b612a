"""bench/bench_dpo.py on a tiny model, both sides in this process: megalite's DPO step and trl's
DPOTrainer see the same tokens every step and agree on the first step (the proof the benchmark
compares the same work), and the report holds the speed and memory ratios."""

import importlib.util
import os

import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--layers", "2", "--hidden-size", "64", "--heads", "4", "--kv-heads", "2", "--ffn-hidden-size", "128",
        "--vocab-size", "500", "--seq-length", "160", "--micro-batch-size", "2", "--steps", "1"]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_dpo", os.path.join(REPO, "bench", "bench_dpo.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_both_sides_do_the_same_work(tmp_path, capsys):
    bench = load_bench()
    a = bench.parse_args(TINY)
    paths = bench.build_model(a, str(tmp_path))
    assert paths["num_pairs"] == 4  # (warm-up + timed steps) x pairs a step
    variants = ("full", "lora")  # "precomputed" differs from "full" by one flag a side; left out for time
    results = {v: {side: bench.measure(a, side, v, paths) for side in bench.SIDES} for v in variants}
    out = bench.report(a, paths, results)
    table = capsys.readouterr().out
    for variant in variants:
        v = out["variants"][variant]
        assert v["same_step_tokens"] and all(v["first_step_agrees"].values()), (variant, table)
        assert v["megalite"]["trained_tokens"] > 0 and v["speed_ratio"] > 0 and v["memory_ratio"] > 0
        assert v["megalite"]["first_step"]["loss"] == pytest.approx(0.693147, abs=1e-5)  # policy == reference
        assert f"{variant:<12}megalite/trl: speed" in table
    assert list(out["variants"]["full"]["first_step_agrees"]) == list(bench.CHECKED)  # the gradient norm too
