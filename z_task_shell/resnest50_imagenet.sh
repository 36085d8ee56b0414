#!/usr/bin/env bash
# ResNeSt-50 on ImageNet-layout data, on 1 device (GPUS=1) or 8 (default, torchrun): SGD momentum 0.9,
# LR 0.1 per 256 images scaled linearly with the global batch (64 per device), 5 warm-up epochs then
# cosine over 120 epochs, weight decay 1e-4, label smoothing 0.1, mixup 0.2, mixed precision.
#   [GPUS=8] [OUTPUT=output] [SMOKE=1] bash z_task_shell/resnest50_imagenet.sh [DATA=data/imagenet] [main.py flags]
source "$(dirname "$0")/common.sh"
DATA=$(data_path "${1:-data/imagenet}"); shift $(( $# > 0 ? 1 : 0 ))
launch "${GPUS:-8}" --train --data "$DATA" --arch resnest50 "${IMAGENET_GEOMETRY[@]}" \
  -b 64 -j 8 --epochs 120 --optimizer sgd --momentum 0.9 --lr 0.1 --lr_scale linear --lr_base_batch 256 \
  --weight_decay 1e-4 --scheduler cosine --warmup 5 --label_smoothing 0.1 --mixup 0.2 --amp \
  --tag "imagenet_${GPUS:-8}dev" "$@"
