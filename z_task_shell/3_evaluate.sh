#!/usr/bin/env bash
# Evaluate a checkpoint on a split: top-1/top-5, per-class precision/recall/F1 and the confusion matrix
# (RUN/eval_SPLIT/metrics.json, confusion_matrix.png), a grid of the misclassified images (errors.png),
# and per-image predictions (RUN/eval_SPLIT/predictions.json).
#   [SPLIT=test] [OUTPUT=output] [SMOKE=1] bash z_task_shell/3_evaluate.sh [CKPT=OUTPUT/resnet18/baseline/checkpoints/best.pth] [main.py flags]
source "$(dirname "$0")/common.sh"
CKPT=${1:-$OUTPUT/resnet18/baseline/checkpoints/best.pth}; shift $(( $# > 0 ? 1 : 0 ))
need_checkpoint "$CKPT"
SPLIT=${SPLIT:-test}
RUN=$(dirname "$(dirname "$CKPT")")
show_run "$PY" main.py --evaluation --resume "$CKPT" --eval_split "$SPLIT" --out "$RUN/eval_$SPLIT/predictions.json" \
  --no_progress "$@"
ls "$RUN/eval_$SPLIT"
