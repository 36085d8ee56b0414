#!/usr/bin/env bash
# Fine-tune EfficientNet-B0 (efficientnet-pytorch) from its ImageNet weights (--pretrained imagenet:
# fetched once by the library into TORCH_HOME, then reused offline) or from a local file given as the
# first argument, with a new head for the data's classes: SGD LR 0.01 momentum 0.9, 1 warm-up epoch then
# cosine over 30 epochs, weight decay 1e-4, label smoothing 0.1, RandomResizedCrop + flip; evaluation
# resize, crop and mean/std are the weights' own (imagenet) or ImageNet's 256/224 centre crop (a file).
# Under SMOKE=1 the ImageNet file must already be cached (the test puts one in a temporary TORCH_HOME).
#   [OUTPUT=output] [SMOKE=1] bash z_task_shell/efficientnet_b0_finetune.sh [PRETRAINED=imagenet] [DATA=data/digits] [main.py flags]
SMOKE_SIZE=32  # efficientnet-pytorch pads statically for its input size: 5x5 kernels need 32x32 at least
source "$(dirname "$0")/common.sh"
PRETRAINED=${1:-imagenet}; shift $(( $# > 0 ? 1 : 0 ))
DATA=$(data_path "${1:-data/digits}"); shift $(( $# > 0 ? 1 : 0 ))
EVAL=()
if [ "$PRETRAINED" != imagenet ]; then
  if [ ! -f "$PRETRAINED" ]; then
    echo "error: pretrained weights file '$PRETRAINED' does not exist (give a file, or nothing for imagenet)" >&2
    exit 2
  fi
  EVAL=(--eval_resize center_crop --crop_pct 0.875)
fi
main_py --train --data "$DATA" --arch efficientnet-b0 --pretrained "$PRETRAINED" \
  --image_size 224 224 --train_resize rrc --rrc_scale 0.08 1.0 --hflip 0.5 ${EVAL[@]+"${EVAL[@]}"} \
  -b 32 --epochs 30 --optimizer sgd --momentum 0.9 --lr 0.01 --weight_decay 1e-4 --scheduler cosine --warmup 1 \
  --label_smoothing 0.1 --tag finetune "$@"
