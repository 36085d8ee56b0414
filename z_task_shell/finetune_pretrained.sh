#!/usr/bin/env bash
# Fine-tune ImageNet weights on your photos: resnet18 (ARCH=...) with --pretrained imagenet (fetched once
# by torchvision into TORCH_HOME, then reused offline; the weights' own mean/std, resize and crop), a new
# head for the data's classes, the backbone frozen for the first epoch (head only, batch norms fixed),
# then every layer at LR 0.001 with the head at 10x, SGD momentum 0.9, cosine over 10 epochs, label
# smoothing 0.1, RandomResizedCrop(0.35-1) at 224. Under SMOKE=1 the weights must already be cached
# (the test puts a file in a temporary TORCH_HOME; HF_HUB_OFFLINE=1 forbids downloading).
#   [ARCH=resnet18] [OUTPUT=output] [SMOKE=1] bash z_task_shell/finetune_pretrained.sh [DATA=data/digits] [main.py flags]
source "$(dirname "$0")/common.sh"
DATA=$(data_path "${1:-data/digits}"); shift $(( $# > 0 ? 1 : 0 ))
main_py --train --data "$DATA" --arch "${ARCH:-resnet18}" --pretrained imagenet \
  --freeze_backbone --unfreeze_epoch 1 --head_lr_mult 10 \
  --image_size 224 224 --train_resize rrc --rrc_scale 0.35 1.0 \
  -b 32 --epochs 10 --optimizer sgd --momentum 0.9 --lr 0.001 --weight_decay 1e-4 --scheduler cosine --warmup 0 \
  --label_smoothing 0.1 --tag finetune_pretrained "$@"
