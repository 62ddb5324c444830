#!/usr/bin/env bash
# Train the shipped models one after another on the local copy of the dataset.
# Usage: scripts/train_all.sh [DATA_DIR] [XCEPTION_WEIGHTS]   (logs in logs/<model>.log)
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data/chest_xray}
weights=${2:-../shared/weights/xception_imagenet_notop.weights.h5}
mkdir -p logs
for model in ${MODELS:-cnn xception mlp}; do
  extra=()
  [ "$model" = xception ] && extra=(--backbone-weights "$weights")
  .venv/bin/python -m pneumo_core train --model "$model" --data "$data" "${extra[@]}" > "logs/$model.log" 2>&1
done
