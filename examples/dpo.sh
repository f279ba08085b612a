#!/usr/bin/env bash
# LoRA DPO on a CPU, after the SFT example (bash examples/demo.sh; bash examples/sft_lora.sh):
# preference pairs from the Python language reference that ships with CPython (the question
# "what comes after this paragraph?"; chosen = the paragraph that really follows, rejected = the
# same paragraph with its words shuffled), held-out rewards/accuracies and a generation of the
# SFT model, LoRA-DPO of it with 2 data-parallel processes (the reference is the same model with
# its adapters disabled: no second copy), then the held-out metrics and the generation again
# (measured on 2 shared CPU cores, 4 minutes: held-out DPO loss 0.693 -> 0.204, rewards/accuracies
# 0.92 and margins 2.56 on 64 held-out pairs after 150 steps; the 4M-parameter model's
# generations stay poor before and after); then a reward model on the same pairs, its HF export,
# and tools/score.py's accuracy on the held-out pairs. About 8 minutes in all. Output in .demo/.
. "$(dirname "$0")/after_demo.sh"
if [ ! -f $W/sft_hf/config.json ]; then
    echo "error: no SFT model in $W/sft_hf; run bash examples/sft_lora.sh first" >&2
    exit 1
fi

run python tools/make_sft_demo_data.py --output-dir $W/dpo_data --preference
DPO=(--pref-data $W/dpo_data/train.jsonl --pref-valid-data $W/dpo_data/valid.jsonl --chat-template alpaca
     --seq-length 160 --max-prompt-length 96 --micro-batch-size 4 --global-batch-size 8 --eval-iters 8
     --num-workers 1 --lora-rank 16 --lora-alpha 32 --lora-target all-linear --dpo-beta 0.1)
rm -rf $W/dpo_lora $W/dpo_before.jsonl
QUESTION=$(python -c 'import json,sys; r=json.loads(open(sys.argv[1]).readline()); print(r["prompt"][0]["content"].replace("\n", " "))' $W/dpo_data/valid.jsonl)
echo "$QUESTION" | run python tools/generate.py --load $W/sft_lora --chat --max-new-tokens 48
# held-out pairs before any training: the policy is the reference (rewards 0, loss log 2); the
# summed log-probs show how much the SFT model alone prefers the true paragraph
run python dpo_gpt.py --load $W/sft_hf --save $W/dpo_lora "${DPO[@]}" --train-iters 1 --skip-train \
    --metrics-file $W/dpo_before.jsonl
run torchrun --nproc_per_node 2 dpo_gpt.py --load $W/sft_hf "${DPO[@]}" \
    --train-iters 150 --lr 5e-4 --min-lr 5e-5 --lr-warmup-iters 10 --log-interval 25 --eval-interval 75 \
    --save $W/dpo_lora
python - $W/dpo_before.jsonl $W/dpo_lora/metrics.jsonl <<'PY'
import json, sys
def last_valid(path):
    return [r for r in map(json.loads, open(path)) if r.get("split") == "valid"][-1]
before, after = last_valid(sys.argv[1]), last_valid(sys.argv[2])
for name in ("loss", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected"):
    print(f"held-out {name:20s} {before[name]:9.4f} before DPO  {after[name]:9.4f} after")
sys.exit(0 if after["loss"] < before["loss"] and after["rewards/accuracies"] >= 0.75
         else "error: DPO did not raise the held-out rewards/accuracies well above 0.5")
PY
echo "$QUESTION" | run python tools/generate.py --load $W/dpo_lora --chat --max-new-tokens 48

# Reward model on the same pairs (dpo_gpt.py --pref-method rm, trl's RewardTrainer loss): the SFT model with a
# fresh score head, fully fine-tuned with 2 data-parallel processes; prompt + completion are scored whole, so
# pairs longer than --seq-length are dropped (counted). Then tools/score.py scores every held-out pair
# (measured on 2 shared CPU cores, 3 minutes in all: held-out accuracy 0.87, 173 of 198 pairs; the run's
# own evaluation, 64 held-out pairs within --seq-length: accuracy 0.86, loss 0.224).
rm -rf $W/rm $W/rm_hf $W/rm_scored.jsonl
run torchrun --nproc_per_node 2 dpo_gpt.py --pref-method rm --load $W/sft_hf \
    --pref-data $W/dpo_data/train.jsonl --pref-valid-data $W/dpo_data/valid.jsonl --chat-template alpaca \
    --seq-length 256 --micro-batch-size 4 --global-batch-size 16 --eval-iters 4 --num-workers 1 \
    --train-iters 60 --lr 3e-4 --min-lr 3e-5 --lr-warmup-iters 6 --log-interval 10 --eval-interval 60 \
    --center-rewards-coefficient 0.01 --save $W/rm
run python tools/convert_checkpoint.py --to-hf --load $W/rm --save $W/rm_hf --dtype fp32  # LlamaForSequenceClassification
run python tools/score.py --load $W/rm --input $W/dpo_data/valid.jsonl --output $W/rm_scored.jsonl --batch-size 32
python - $W/rm_scored.jsonl <<'PY'
import json, sys
wins = [r["chosen_wins"] for r in map(json.loads, open(sys.argv[1]))]
print(f"held-out reward-model accuracy {sum(wins) / len(wins):.4f} on {len(wins)} pairs")
sys.exit(0 if sum(wins) / len(wins) >= 0.75 else "error: the reward model does not prefer the true next paragraph")
PY
