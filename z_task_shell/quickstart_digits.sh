#!/usr/bin/env bash
# Quickstart: install, then train resnet18 on the bundled digits (48x48 input) and evaluate best.pth on the
# test split. Prints the run directory and the test top-1. A second run resumes (nothing left to train)
# and re-evaluates. Extra flags are passed to main.py, e.g. `--epochs 5 --tag quick`.
#   [OUTPUT=output] [SMOKE=1] bash z_task_shell/quickstart_digits.sh [main.py flags]
source "$(dirname "$0")/common.sh"
main_py --train --config z_task_shell/configs/digits_resnet18.yaml --data "$(data_path data/digits)" "$@"
