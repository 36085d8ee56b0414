#!/usr/bin/env bash
# Baseline: resnet18 from scratch, softmax cross-entropy, the default schedule (SGD 0.1, momentum 0.9,
# 1 warm-up epoch then cosine), 32x32 inputs as for the bundled digits. The run goes to
# OUTPUT/resnet18/baseline (checkpoints/best.pth, metrics.json, TensorBoard events, test report).
#   [OUTPUT=output] [SMOKE=1] bash z_task_shell/1_train_baseline.sh [DATA=data/digits] [main.py flags]
source "$(dirname "$0")/common.sh"
DATA=$(data_path "${1:-data/digits}"); shift $(( $# > 0 ? 1 : 0 ))
main_py --train --data "$DATA" --arch resnet18 --criterion softmax --image_size 32 32 --epochs 30 \
  --tag baseline "$@"
