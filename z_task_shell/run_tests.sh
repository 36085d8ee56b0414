#!/usr/bin/env bash
# Tests: install, then run the whole pytest suite (slow end-to-end runs included). Extra arguments go
# to pytest, e.g. `-m "not slow"` or `-k resume`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash z_task_shell/install.sh
.venv/bin/python -m pytest tests "$@"
