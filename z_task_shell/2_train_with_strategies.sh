#!/usr/bin/env bash
# Strategies: a sweep (z_task_shell/configs/strategies.yaml) of the baseline recipe trained once per
# augmentation, mixing and loss option, one change per run, ending with the --compare table of best val
# and test top-1. Runs go to OUTPUT/strategies/resnet18/<variant>; a rerun skips finished ones and resumes
# interrupted ones. GPUs: --sweep_devices 0,1,2,3 runs one variant per GPU at a time.
#   [EPOCHS=30] [OUTPUT=output] [SMOKE=1] bash z_task_shell/2_train_with_strategies.sh [DATA=data/digits] [main.py flags]
source "$(dirname "$0")/common.sh"
DATA=$(data_path "${1:-data/digits}"); shift $(( $# > 0 ? 1 : 0 ))
show_run "$PY" main.py --sweep z_task_shell/configs/strategies.yaml --data "$DATA" --epochs "${EPOCHS:-30}" \
  --output "$OUTPUT" "$@" ${SMOKE_ARGS[@]+"${SMOKE_ARGS[@]}"}
