#!/usr/bin/env bash
# A Chinese corpus from raw to a trained model, on a CPU: real modern Chinese prose (the
# LibreOffice help in Simplified Chinese, Debian's libreoffice-help-zh-cn 4:7.4.7 (bookworm),
# MPL-2.0; scripts/setup_env.sh unpacks it into .cache/, never copied here) mixed with web-like
# pages made from it (navigation menus, keyword spam, repeated lines, mojibake, exact and near
# copies, English and Japanese pages, planted phone and ID numbers), cleaned with FineWeb-2's
# Chinese rules (examples/configs/clean_zh.yaml: jieba words, Chinese stop words and thresholds,
# character-shingle MinHash, Chinese PII), a BPE tokenizer trained for Chinese (characters per
# token printed), tokenized into .bin/.idx, and a short pretraining run that prints the held-out
# (test split) perplexity.
# Everything goes to .demo/clean_zh/ (git-ignored). Sizes: DOCS (default 1500: 70% of them are
# help pages, the 1,174 of 200+ characters mostly in Chinese are all there are), VOCAB (8000),
# ITERS (100); WORK moves the output; SKIP_SETUP=1 uses the python already on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${SKIP_SETUP:-}" ]; then
    bash scripts/setup_env.sh
    . .venv/bin/activate
fi

W=${WORK:-.demo/clean_zh}
run() { printf '\n$ %s\n' "$*"; "$@"; }

rm -rf "$W"
run python data_tools/sample_corpus_zh.py --output-dir "$W/raw" --docs "${DOCS:-1500}"
run python data_tools/run_pipeline.py --config examples/configs/clean_zh.yaml \
    --input "$W/raw" --output "$W/cleaned" --workers 2
run python data_tools/train_tokenizer.py --input "$W/cleaned/data" --vocab-size "${VOCAB:-8000}" \
    --character-coverage 0.9995 --max-piece-length 8 --output-dir "$W/tokenizer" \
    --report "$W/tokenizer/chars_per_token.json"
run python tools/preprocess_data.py --input "$W/cleaned/data" --output-prefix "$W/tokens/help" \
    --tokenizer-type SentencePieceTokenizer --tokenizer-model "$W/tokenizer/tokenizer.model" \
    --append-eod --workers 2
run python pretrain_gpt.py --config examples/configs/demo_cpu.yaml \
    --data-path "$W/tokens/help_text_document" --split 90,5,5 \
    --train-iters "${ITERS:-100}" --eval-interval "${ITERS:-100}" --save-interval "${ITERS:-100}" \
    --micro-batch-size 8 --global-batch-size 8 \
    --tokenizer-type SentencePieceTokenizer --tokenizer-model "$W/tokenizer/tokenizer.model" \
    --save "$W/checkpoints" --metrics-file "$W/checkpoints/metrics.jsonl"
python - "$W" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(f"{sys.argv[1]}/checkpoints/metrics.jsonl")]
test = [r for r in rows if r.get("split") == "test"][-1]
print(f"\nheld-out (test split) perplexity after {test['iteration']} iterations: {test['ppl']:.1f}")
PY
echo
echo "removed documents and why: $W/cleaned/rejected/, $W/cleaned/report.txt"
echo "training data: --data-path $W/tokens/help_text_document"
