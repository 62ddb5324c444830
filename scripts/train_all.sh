#!/usr/bin/env bash
# Train the shipped models one after another on the local copy of the dataset, with the settings
# their config.json records. cnn_robust is fine-tuned in three warm-started stages from a border-trimmed cnn
# trained first (runs/cnn_trim): the robust augmentation at strength 1, then at 1.4, then with NORMAL images
# also zoomed in (--normal-zoom 0.3).
# Usage: scripts/train_all.sh [DATA_DIR] [XCEPTION_WEIGHTS]   (logs in logs/<model>.log)
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data/chest_xray}
weights=${2:-../shared/weights/xception_imagenet_notop.weights.h5}
mkdir -p logs
train() { .venv/bin/python -m pneumo_core train --data "$data" "$@"; }
for model in ${MODELS:-cnn cnn_robust xception mlp}; do
  case $model in
    cnn) train --model cnn --subtype-weight 1 ;;
    cnn_robust)
      train --model cnn --framing trim --subtype-weight 1 --out runs/cnn_trim &&
        train --model cnn_robust --init-from runs/cnn_trim/cnn --subtype-weight 1 --learning-rate 2e-4 \
          --epochs 15 --patience 4 --out runs/cnn_robust_stage1 &&
        train --model cnn_robust --init-from runs/cnn_robust_stage1/cnn_robust --augment-strength 1.4 \
          --subtype-weight 1 --learning-rate 2e-4 --epochs 10 --patience 4 --out runs/cnn_robust_stage2 &&
        train --model cnn_robust --init-from runs/cnn_robust_stage2/cnn_robust --augment-strength 1.4 \
          --normal-zoom 0.3 --subtype-weight 1 --learning-rate 2e-4 --epochs 8 --patience 3 ;;
    xception) train --model xception --backbone-weights "$weights" ;;
    *) train --model "$model" ;;
  esac > "logs/$model.log" 2>&1
done
