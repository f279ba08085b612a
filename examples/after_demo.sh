# Sourced by the examples that start from the demo's pretrained model (sft_lora.sh, dpo.sh):
# the environment, the demo's folder $W, the echoing `run`, and a clear error without the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate

W=.demo
run() { printf '\n$ %s\n' "$*"; "$@"; }
if [ ! -f $W/checkpoints/latest_checkpointed_iteration.txt ]; then
    echo "error: no pretrained demo checkpoint in $W/checkpoints; run bash examples/demo.sh first" >&2
    exit 1
fi
