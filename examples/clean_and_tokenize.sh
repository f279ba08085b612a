#!/usr/bin/env bash
# From a raw web corpus to training data, on a CPU: generate a raw corpus (a WARC of HTML news
# pages wrapped in menus, scripts, cookie banners and footers; JSONL web documents with exact
# and near copies, boilerplate, spam and other languages; a few plain-text notes; all built
# from the English prose that ships with CPython), clean and deduplicate it with the
# FineWeb-style pipeline in examples/configs/clean.yaml (2 worker processes), train a BPE
# tokenizer on what is left, and tokenize it into Megatron .bin/.idx files.
# Everything goes to .demo/clean/ (git-ignored). Sizes: DOCS (default 3000), PAGES (300),
# VOCAB (4096); WORK moves the output; SKIP_SETUP=1 uses the python already on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${SKIP_SETUP:-}" ]; then
    bash scripts/setup_env.sh
    . .venv/bin/activate
fi

W=${WORK:-.demo/clean}
run() { printf '\n$ %s\n' "$*"; "$@"; }

rm -rf "$W"
run python data_tools/sample_corpus.py --output-dir "$W/raw" --docs "${DOCS:-3000}" --pages "${PAGES:-300}"
run python data_tools/run_pipeline.py --config examples/configs/clean.yaml \
    --input "$W/raw" --output "$W/cleaned" --workers 2
run python data_tools/train_tokenizer.py --input "$W/cleaned/data" --vocab-size "${VOCAB:-4096}" \
    --output-dir "$W/tokenizer"
run python tools/preprocess_data.py --input "$W/cleaned/data" --output-prefix "$W/tokens/web" \
    --tokenizer-type SentencePieceTokenizer --tokenizer-model "$W/tokenizer/tokenizer.model" \
    --append-eod --workers 2
echo
echo "removed documents and why: $W/cleaned/rejected/, $W/cleaned/report.txt"
echo "training data: --data-path $W/tokens/web_text_document"
