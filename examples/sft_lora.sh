#!/usr/bin/env bash
# LoRA supervised fine-tuning on a CPU, after the demo (bash examples/demo.sh): build an
# instruction set from the Python language reference that ships with CPython (questions and
# answers, alpaca format), LoRA-fine-tune the demo's pretrained 4M-parameter model on it with
# 2 data-parallel processes (packed rows, the alpaca chat template), check that the validation
# loss fell, ask the result a question through the generation CLI, then export the merged
# model (and the template it was trained with) to a Hugging Face folder. Output in .demo/.
. "$(dirname "$0")/after_demo.sh"

run python tools/make_sft_demo_data.py --output-dir $W/sft
SFT=(--sft-data $W/sft/train.jsonl --sft-valid-data $W/sft/valid.jsonl --chat-template alpaca
     --seq-length 256 --packing --micro-batch-size 8 --global-batch-size 16 --eval-iters 8 --num-workers 1)
rm -rf $W/sft_lora $W/sft_before.jsonl
# the validation loss of the pretrained model, before any fine-tuning
run python sft_gpt.py --load $W/checkpoints "${SFT[@]}" --train-iters 1 --skip-train \
    --metrics-file $W/sft_before.jsonl
run torchrun --nproc_per_node 2 sft_gpt.py --load $W/checkpoints "${SFT[@]}" \
    --lora-rank 16 --lora-alpha 32 --lora-target all-linear \
    --train-iters 150 --lr 2e-3 --min-lr 2e-4 --lr-warmup-iters 10 --log-interval 25 --eval-interval 75 \
    --save $W/sft_lora
python - $W/sft_before.jsonl $W/sft_lora/metrics.jsonl <<'PY'
import json, sys
def last_valid(path):
    return [r for r in map(json.loads, open(path)) if r.get("split") == "valid"][-1]["loss"]
before, after = last_valid(sys.argv[1]), last_valid(sys.argv[2])
print(f"\nvalidation loss on held-out questions: {before:.3f} before LoRA-SFT, {after:.3f} after")
sys.exit(0 if after < before else "error: the validation loss did not fall")
PY
echo "Explain The \"assert\" statement." | run python tools/generate.py --load $W/sft_lora --chat --max-new-tokens 60
run python tools/convert_checkpoint.py --to-hf --load $W/sft_lora --save $W/sft_hf --dtype fp32
run python tools/convert_checkpoint.py --to-peft --load $W/sft_lora --save $W/sft_peft
run python examples/hf_chat.py $W/sft_hf "Explain The \"for\" statement."
