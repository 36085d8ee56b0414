#!/usr/bin/env bash
# LR range test (Smith; as torch-lr-finder / fastai): a short sweep with an exponentially growing LR on
# the training split, then prints the suggested LR (steepest fall of the smoothed loss). The plot goes to
# OUTPUT/ARCH/lr_finder/lr_finder.png.
#   [ARCH=resnet18] [OUTPUT=output] [SMOKE=1] bash z_task_shell/0_check_best_lr.sh [DATA=data/digits] [main.py flags]
source "$(dirname "$0")/common.sh"
DATA=$(data_path "${1:-data/digits}"); shift $(( $# > 0 ? 1 : 0 ))
ARCH=${ARCH:-resnet18}
main_py --lr_finder --data "$DATA" --arch "$ARCH" --image_size 32 32 --optimizer sgd --momentum 0.9 \
  --lr_finder_min 1e-5 --lr_finder_max 10 --lr_finder_steps "$([ "$SMOKE" = 1 ] && echo 5 || echo 100)" \
  --tag lr_finder "$@"
"$PY" - "$OUTPUT/${ARCH//\//-}/lr_finder/lr_finder.json" <<'PY'
import json, sys
result = json.load(open(sys.argv[1]))
print(f"suggested LR {result['suggested_lr']:.3g} (steepest descent); loss minimum at {result['min_loss_lr']:.3g}; "
      f"plot {result['plot']}")
PY
