#!/usr/bin/env bash
# ResNeXt-50 32x4d on ImageNet-layout data: SGD momentum 0.9, LR 0.1 per 256 images scaled linearly with
# the global batch (64 per device), 5 warm-up epochs then cosine to 0 over 100 epochs, weight decay 1e-4,
# label smoothing 0.1, mixed precision. ZIP=1 reads DATA as zip archives ({split}.zip + {split}_map.txt,
# dataloader/layout_writers.py) without extracting them.
#   [GPUS=8] [ZIP=1] [OUTPUT=output] [SMOKE=1] bash z_task_shell/resnext50_32x4d_imagenet.sh [DATA=data/imagenet] [main.py flags]
# Smoke runs at 64x64: at 16x16 the last stage is 1 x 1 and its batch norm over 8 values overflowed in bf16
# (--amp) in the first steps on some CPUs, whatever the LR.
SMOKE_SIZE=64
source "$(dirname "$0")/common.sh"
DATA=$(data_path "${1:-data/imagenet}"); shift $(( $# > 0 ? 1 : 0 ))
LAYOUT=(--dataset folder)
if [ "${ZIP:-0}" = 1 ]; then
  LAYOUT=(--zip)
  if [ "$SMOKE" = 1 ]; then  # the smoke set as zip archives
    [ -f "$OUTPUT/smoke_digits_zip/train.zip" ] || "$PY" utils/make_digits.py --out "$DATA" --per_class 4 --zip "$OUTPUT/smoke_digits_zip"
    DATA="$OUTPUT/smoke_digits_zip"
  fi
fi
launch "${GPUS:-8}" --train --data "$DATA" "${LAYOUT[@]}" --arch resnext50_32x4d "${IMAGENET_GEOMETRY[@]}" \
  -b 64 -j 8 --epochs 100 --optimizer sgd --momentum 0.9 --lr 0.1 --lr_scale linear --lr_base_batch 256 \
  --weight_decay 1e-4 --scheduler cosine --warmup 5 --label_smoothing 0.1 --amp \
  --tag "imagenet$([ "${ZIP:-0}" = 1 ] && echo _zip)" "$@"
