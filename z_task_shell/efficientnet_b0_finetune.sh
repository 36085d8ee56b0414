#!/usr/bin/env bash
# Fine-tune EfficientNet-B0 (efficientnet-pytorch) from a local pretrained file (e.g. the ImageNet
# efficientnet-b0-355c32eb.pth; nothing is downloaded) with a new head for the data's classes: SGD LR
# 0.01 momentum 0.9, 1 warm-up epoch then cosine over 30 epochs, weight decay 1e-4, label smoothing
# 0.1, RandomResizedCrop + flip, resize and centre-crop for evaluation. Under SMOKE=1 a file of random
# ImageNet-shaped (1000-class) weights stands in for PRETRAINED.
#   [OUTPUT=output] [SMOKE=1] bash z_task_shell/efficientnet_b0_finetune.sh PRETRAINED [DATA=data/digits] [main.py flags]
SMOKE_SIZE=32  # efficientnet-pytorch pads statically for its input size: 5x5 kernels need 32x32 at least
source "$(dirname "$0")/common.sh"
PRETRAINED=${1:-}; shift $(( $# > 0 ? 1 : 0 ))
DATA=$(data_path "${1:-data/digits}"); shift $(( $# > 0 ? 1 : 0 ))
if [ "$SMOKE" = 1 ]; then
  PRETRAINED="$OUTPUT/smoke_efficientnet-b0_imagenet.pth"
  [ -f "$PRETRAINED" ] || "$PY" -c "import sys, torch; from models import create_model
torch.save(create_model('efficientnet-b0', 1000).state_dict(), sys.argv[1])" "$PRETRAINED"
fi
if [ -z "$PRETRAINED" ] || [ ! -f "$PRETRAINED" ]; then
  echo "error: give the pretrained weights file as the first argument (got '${PRETRAINED}')" >&2
  exit 2
fi
main_py --train --data "$DATA" --arch efficientnet-b0 --pretrained "$PRETRAINED" "${IMAGENET_GEOMETRY[@]}" \
  -b 32 --epochs 30 --optimizer sgd --momentum 0.9 --lr 0.01 --weight_decay 1e-4 --scheduler cosine --warmup 1 \
  --label_smoothing 0.1 --tag finetune "$@"
