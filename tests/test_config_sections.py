"""Each entrypoint takes only its own config sections: its --help lists them with their defaults,
another entrypoint's flag (or --config key) is one error line naming the tool that takes it, and
every section still travels in a Config and in checkpoint settings."""

import dataclasses
import re

import pytest

from megalite.config import SECTIONS, Config, parse_config
from megalite.errors import MegaliteError
from tests.conftest import run_tool


def flags_of(*sections):
    return {f.metadata.get("flag") or "--" + f.name.replace("_", "-")
            for s in sections for f in dataclasses.fields(SECTIONS[s])}


def help_entries(tool):
    """{flag: its help text, unwrapped} from ``python tool --help``."""
    entries, current = {}, None
    for line in run_tool(tool, "--help").stdout.splitlines():
        m = re.match(r"  (-\S+(?:, -\S+)?)( \S+)*?(?:  +(.*))?$", line)
        if m and line.startswith("  -"):
            current = m.group(1).split(",")[0]
            entries[current] = m.group(3) or ""
        elif current and line.startswith("   "):
            entries[current] += " " + line.strip()
    return {k: v.strip() for k, v in entries.items()}


@pytest.fixture(scope="module")
def helps():
    return {tool: help_entries(tool) for tool in ("pretrain_gpt.py", "sft_gpt.py", "dpo_gpt.py")}


def test_pretrain_help_lists_no_post_training_flag(helps):
    text = run_tool("pretrain_gpt.py", "--help").stdout
    assert len(re.findall("dpo", text, re.IGNORECASE)) == 0  # python pretrain_gpt.py --help | grep -ci dpo: 0
    listed = set(helps["pretrain_gpt.py"])
    assert not listed & flags_of("chat", "sft", "dpo", "kto", "reward")
    assert flags_of("model", "parallel", "data", "training", "logging", "checkpoint", "lora") <= listed


def test_sft_and_dpo_help_list_their_own_flags(helps):
    sft, dpo = set(helps["sft_gpt.py"]), set(helps["dpo_gpt.py"])
    assert not sft & flags_of("dpo", "kto", "reward")
    assert {"--lora-rank", "--chat-template", "--packing", "--sft-data", "--train-on-prompt", "--lr"} <= sft
    assert not dpo & flags_of("sft")  # --packing, --sft-data, --train-on-prompt: nothing a preference stage reads
    assert {"--dpo-beta", "--pref-method", "--chat-template", "--kto-loss-type", "--center-rewards-coefficient",
            "--lora-rank", "--lr"} <= dpo


def test_help_shows_defaults(helps):
    h = helps["pretrain_gpt.py"]
    for flag, default in [("--lr", "1e-4"), ("--lr-decay-style", "linear"), ("--split", "969,30,1"),
                          ("--log-interval", "100"), ("--adam-eps", "1e-8"), ("--min-lr", "0.0"),
                          ("--zero-stage", "0")]:
        assert h[flag].endswith(f"(default: {default})"), (flag, h[flag])
    assert h["--save"] == "checkpoint folder"  # None says nothing: no "(default: None)"
    assert "(default:" not in h["--bf16"] and "(default:" not in h["--disable-bias-linear"]  # switches
    assert helps["dpo_gpt.py"]["--dpo-beta"].endswith("(default: 0.1)")


def test_another_tools_flag_is_one_error_line():
    proc = run_tool("pretrain_gpt.py", "--dpo-beta", "0.5", "--packing", check=False)
    assert proc.returncode == 1
    assert proc.stderr == "error: --dpo-beta is a setting of dpo_gpt.py, not of pretrain_gpt.py\n"
    for tool, argv, line in [
            ("pretrain_gpt.py", ["--packing"], "--packing is a setting of sft_gpt.py, not of pretrain_gpt.py"),
            ("pretrain_gpt.py", ["--chat-template=qwen"],
             "--chat-template is a setting of sft_gpt.py, dpo_gpt.py and rl_gpt.py, not of pretrain_gpt.py"),
            ("dpo_gpt.py", ["--num-generations", "4"],
             "--num-generations is a setting of rl_gpt.py, not of dpo_gpt.py"),
            ("sft_gpt.py", ["--lr", "1e-3", "--pref-method", "kto"],
             "--pref-method is a setting of dpo_gpt.py, not of sft_gpt.py"),
            ("dpo_gpt.py", ["--packing"], "--packing is a setting of sft_gpt.py, not of dpo_gpt.py")]:
        with pytest.raises(MegaliteError) as e:
            parse_config(argv, tool=tool)
        assert str(e.value) == line


def test_another_tools_yaml_key_is_one_error_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 3e-4\ndpo_beta: 0.2\n")
    with pytest.raises(MegaliteError) as e:
        parse_config(["--config", str(path)], tool="pretrain_gpt.py")
    assert str(e.value) == f"--config {path}: dpo_beta is a setting of dpo_gpt.py, not of pretrain_gpt.py"
    path.write_text("train-on-prompt: true\n")
    with pytest.raises(MegaliteError, match="train-on-prompt is a setting of sft_gpt.py, not of dpo_gpt.py"):
        parse_config(["--config", str(path)], tool="dpo_gpt.py")
    path.write_text("chat-template: alpaca\ndpo-beta: 0.2\nlora-rank: 4\n")
    cfg = parse_config(["--config", str(path)], tool="dpo_gpt.py")
    assert (cfg.chat.chat_template, cfg.dpo.dpo_beta, cfg.lora.lora_rank) == ("alpaca", 0.2, 4)


def test_every_section_stays_in_the_config_and_its_settings():
    cfg = parse_config(["--lr", "3e-4"], tool="pretrain_gpt.py")
    assert cfg.dpo.dpo_beta == 0.1 and cfg.sft.packing is False and cfg.chat.chat_template is None
    cfg = parse_config(["--pref-method", "kto", "--chat-template", "alpaca", "--kto-undesirable-weight", "2",
                        "--center-rewards-coefficient", "0.01", "--lora-rank", "8"], tool="dpo_gpt.py")
    again = Config.from_dict(cfg.to_dict())
    assert again == cfg and set(again.to_dict()) == set(SECTIONS)
    # settings saved before chat_template had its own section still load
    old = Config().to_dict()
    del old["chat"]
    old["sft"].update(chat_template="llama3", sft_data="a.jsonl")
    loaded = Config.from_dict(old)
    assert (loaded.chat.chat_template, loaded.sft.sft_data) == ("llama3", "a.jsonl")


def test_the_renamed_stage_selector_still_works_with_a_warning(tmp_path, capsys):
    """dpo_gpt.py --stage (before it became --pref-method): the flag, a --config key and the
    settings of a checkpoint saved before the rename all still select the stage."""
    cfg = parse_config(["--stage", "kto"], tool="dpo_gpt.py")
    assert cfg.dpo.pref_method == "kto" and "pref_method" in cfg.explicit
    assert capsys.readouterr().err == "warning: --stage is deprecated and goes in the next release: use --pref-method\n"
    (tmp_path / "c.yaml").write_text("stage: rm\n")
    assert parse_config(["--config", str(tmp_path / "c.yaml")], tool="dpo_gpt.py").dpo.pref_method == "rm"
    assert "stage is deprecated" in capsys.readouterr().err
    old = Config().to_dict()  # the settings of a KTO run saved before the rename
    del old["dpo"]["pref_method"]
    old["dpo"].update(stage="kto", pref_data="kto.jsonl")
    assert Config.from_dict(old).dpo.pref_method == "kto"
    # its --save is resumed by a KTO run only (posttrain.stage.PostTrainStage.is_run_of)
    from megalite.posttrain.dpo import DPOStage
    from megalite.posttrain.kto import KTOStage

    assert KTOStage().is_run_of(old) and not DPOStage().is_run_of(old)
