#!/usr/bin/env bash
# Tests: install, then run both tiers of the pytest suite: tests/unit (no end-to-end training, a few
# minutes) first, then tests/e2e (real processes, trainings, exports, torchrun). Extra arguments go to
# pytest, e.g. `-k resume` or `-x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash z_task_shell/install.sh
.venv/bin/python -m pytest tests/unit tests/e2e "$@"
