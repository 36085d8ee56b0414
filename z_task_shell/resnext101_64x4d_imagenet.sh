#!/usr/bin/env bash
# ResNeXt-101 64x4d on ImageNet-layout data, the published recipe: SGD momentum 0.9, LR 0.05 at batch 64
# per device (scaled linearly with the number of devices), 1 warm-up epoch then cosine to 0 over 150
# epochs, weight decay 1e-4, label smoothing 0.1; RandomResizedCrop(0.08-1, 3/4-4/3) + flip for
# training, resize 256 and centre-crop 224 for evaluation.
#   [GPUS=8] [OUTPUT=output] [SMOKE=1] bash z_task_shell/resnext101_64x4d_imagenet.sh [DATA=data/imagenet] [main.py flags]
source "$(dirname "$0")/common.sh"
DATA=$(data_path "${1:-data/imagenet}"); shift $(( $# > 0 ? 1 : 0 ))
launch "${GPUS:-8}" --train --data "$DATA" --arch resnext101_64x4d "${IMAGENET_GEOMETRY[@]}" \
  -b 64 -j 8 --epochs 150 --optimizer sgd --momentum 0.9 --lr 0.05 --lr_scale linear --lr_base_batch 64 \
  --weight_decay 1e-4 --scheduler cosine --warmup 1 --label_smoothing 0.1 --tag imagenet "$@"
