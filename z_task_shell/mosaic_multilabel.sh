#!/usr/bin/env bash
# Multi-label: train resnet18 on the bundled digit mosaics (written by utils/make_digits.py --multi_label when
# missing), thresholds tuned on val, then test mAP, per-class AP/P/R/F1 and the worst images per class in
# OUTPUT/resnet18/mosaic_multilabel/eval_test/. Extra flags are passed to main.py, e.g. `--seed 1 --tag s1`.
#   [OUTPUT=output] [SMOKE=1] bash z_task_shell/mosaic_multilabel.sh [DATA] [main.py flags]
source "$(dirname "$0")/common.sh"
DATA=${1:-data/digits_mosaic}
if [ "$SMOKE" = 1 ]; then  # ten mosaics per digit and split, from the smoke digits
  DATA="$OUTPUT/smoke_mosaic"
  [ -f "$DATA/test.csv" ] || "$PY" utils/make_digits.py --out "$OUTPUT/smoke_digits" --per_class 4 \
    --multi_label "$DATA"
else
  [ -f "$DATA/test.csv" ] || "$PY" utils/make_digits.py --multi_label "$DATA"
fi
main_py --train --config z_task_shell/configs/mosaic_multilabel.yaml --data "$DATA" "${@:2}"
