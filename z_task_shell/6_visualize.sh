#!/usr/bin/env bash
# Explain predictions: CAM, Grad-CAM and Grad-CAM++ overlays for every image of a split and one
# gallery per method (RUN/visual/<method>/<split>/gallery.png), on the last convolutional block.
#   [SPLIT=test] [LIMIT=40] [OUTPUT=output] [SMOKE=1] bash z_task_shell/6_visualize.sh [CKPT=OUTPUT/resnet18/baseline/checkpoints/best.pth] [main.py flags]
source "$(dirname "$0")/common.sh"
CKPT=${1:-$OUTPUT/resnet18/baseline/checkpoints/best.pth}; shift $(( $# > 0 ? 1 : 0 ))
need_checkpoint "$CKPT"
for method in cam grad-cam grad-cam++; do
  show_run "$PY" main.py --visual_data "${SPLIT:-test}" --visual_method "$method" --visual_limit "${LIMIT:-40}" \
    --resume "$CKPT" --no_progress "$@"
done
ls "$(dirname "$(dirname "$CKPT")")"/visual/*/"${SPLIT:-test}"/gallery.png
