#!/usr/bin/env bash
# Strategies: the baseline recipe (z_task_shell/configs/digits_resnet18.yaml) trained once per
# augmentation, mixing and loss option (benchmarks/loss_options.py holds the list), one change per run,
# then one markdown table of best val and test top-1. Runs go to OUTPUT/strategies/resnet18/<option>.
#   [EPOCHS=30] [OUTPUT=output] [SMOKE=1] bash z_task_shell/2_train_with_strategies.sh [DATA=data/digits] [main.py flags]
source "$(dirname "$0")/common.sh"
DATA=$(data_path "${1:-data/digits}"); shift $(( $# > 0 ? 1 : 0 ))
show_run "$PY" benchmarks/loss_options.py --data "$DATA" --epochs "${EPOCHS:-30}" --output "$OUTPUT/strategies" \
  "$@" ${SMOKE_ARGS[@]+"${SMOKE_ARGS[@]}"}
