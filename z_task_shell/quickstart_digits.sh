#!/usr/bin/env bash
# Quickstart: install, then train resnet18 on the bundled digits (32x32) and evaluate best.pth on the
# test split. Prints the run directory and the test top-1. A second run resumes (nothing left to train)
# and re-evaluates. Extra flags are passed to main.py, e.g. `--epochs 5 --tag quick`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash z_task_shell/install.sh
.venv/bin/python main.py --train --config z_task_shell/configs/digits_resnet18.yaml --no_progress "$@"
