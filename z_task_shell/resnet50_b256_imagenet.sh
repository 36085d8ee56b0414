#!/usr/bin/env bash
# ResNet-50 on ImageNet-layout data, the MMClassification baseline (resnet50_8xb32_in1k): 8 devices x 32
# = batch 256, SGD LR 0.1 momentum 0.9, weight decay 1e-4, LR x0.1 at epochs 30, 60 and 90, 100 epochs,
# no warm-up, no label smoothing; RandomResizedCrop + flip, resize 256 and centre-crop 224 for evaluation.
#   [GPUS=8] [OUTPUT=output] [SMOKE=1] bash z_task_shell/resnet50_b256_imagenet.sh [DATA=data/imagenet] [main.py flags]
source "$(dirname "$0")/common.sh"
DATA=$(data_path "${1:-data/imagenet}"); shift $(( $# > 0 ? 1 : 0 ))
GPUS=${GPUS:-8}
launch "$GPUS" --train --data "$DATA" --arch resnet50 "${IMAGENET_GEOMETRY[@]}" \
  -b $(( 256 / GPUS )) -j 8 --epochs 100 --optimizer sgd --momentum 0.9 --lr 0.1 --weight_decay 1e-4 \
  --scheduler multistep --lr_steps 30 60 90 --lr_ratios 0.1 0.01 0.001 --warmup 0 --tag b256 "$@"
