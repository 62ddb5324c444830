#!/usr/bin/env bash
# Train the shipped models one after another on the local copy of the dataset, with the settings
# their config.json records. cnn_robust is fine-tuned in three warm-started stages from a border-trimmed cnn
# trained first (runs/cnn_trim): the robust augmentation at strength 1, then at 1.4, then with NORMAL images
# also zoomed in (--normal-zoom 0.3). cnn_ensemble (after cnn_robust) averages that third stage with the same
# recipe under another seed (from the second stage) and a fourth stage with a wider normal zoom (from the third).
# xception is trained with the basic augmentation, then fine-tuned again with the robust one and the normal zoom.
# xception_cnn_ensemble (after both) averages the shipped xception and cnn_ensemble; nothing is trained.
# Usage: scripts/train_all.sh [DATA_DIR] [XCEPTION_WEIGHTS]   (logs in logs/<model>.log)
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data/chest_xray}
weights=${2:-../shared/weights/xception_imagenet_notop.weights.h5}
mkdir -p logs
train() { .venv/bin/python -m pneumo_core train --data "$data" "$@"; }
for model in ${MODELS:-cnn cnn_robust cnn_ensemble xception xception_cnn_ensemble mlp}; do
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
    cnn_ensemble)
      zoomed() { train --model cnn_robust --augment-strength 1.4 --subtype-weight 1 --learning-rate 2e-4 \
        --epochs 8 --patience 3 "$@"; }
      zoomed --init-from runs/cnn_robust_stage2/cnn_robust --normal-zoom 0.3 --seed 7 --out runs/cnn_robust_s7 &&
        zoomed --init-from models/cnn_robust --normal-zoom 0.45 --out runs/cnn_robust_nz45 &&
        train --model cnn_ensemble \
          --members models/cnn_robust runs/cnn_robust_s7/cnn_robust runs/cnn_robust_nz45/cnn_robust ;;
    xception)
      train --model xception --backbone-weights "$weights" --out runs/xception_basic &&
        train --model xception --init-from runs/xception_basic/xception --backbone-weights none --epochs 0 \
          --fine-tune-epochs 6 --fine-tune-learning-rate 3e-5 --augment robust --normal-zoom 0.3 --patience 2 ;;
    xception_cnn_ensemble) train --model xception_cnn_ensemble --members models/xception models/cnn_ensemble ;;
    *) train --model "$model" ;;
  esac > "logs/$model.log" 2>&1
done
