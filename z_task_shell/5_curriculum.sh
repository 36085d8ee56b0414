#!/usr/bin/env bash
# Curriculum learning: --make_curriculum weights every training image by how well a trained model knows
# it (probability of the true class over 0.9, over 0.5, below: weights 1.0, 0.7, 0.4) into
# DATA/curriculum.txt, then --curriculum_learning trains resnet18 with each sample's loss so weighted.
#   [OUTPUT=output] [SMOKE=1] bash z_task_shell/5_curriculum.sh [CKPT=OUTPUT/resnet18/baseline/checkpoints/best.pth] [main.py flags]
source "$(dirname "$0")/common.sh"
CKPT=${1:-$OUTPUT/resnet18/baseline/checkpoints/best.pth}; shift $(( $# > 0 ? 1 : 0 ))
need_checkpoint "$CKPT"
show_run "$PY" main.py --make_curriculum --resume "$CKPT" --curriculum_thresholds 0.9 0.5 0.0 \
  --curriculum_weights 1.0 0.7 0.4 --no_progress
DATA=$("$PY" -c "import sys, torch; print(torch.load(sys.argv[1], map_location='cpu', weights_only=True)['config']['data'])" "$CKPT")
main_py --train --data "$DATA" --arch resnet18 --image_size 32 32 --curriculum_learning --tag curriculum "$@"
