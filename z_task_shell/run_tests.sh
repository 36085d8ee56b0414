#!/usr/bin/env bash
# Tests: install, lint (ruff, its rules in ruff.toml), then run both tiers of the pytest suite in one run:
# tests/unit (no end-to-end training; `pytest tests/unit` alone takes about 2 minutes) and tests/e2e (real
# processes, trainings, exports, torchrun). Extra arguments go to pytest, e.g. `-k resume`, `-x` or `-n 0`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash z_task_shell/install.sh
# The headless browser the web page test drives (chromium + chromedriver from apt; skipped when present)
bash z_task_shell/install_browser.sh
# The linter first: import order, unused names, lines of at most 120 (`.venv/bin/ruff check --fix .` fixes most)
.venv/bin/ruff check .
# One pytest worker per core (pytest-xdist; an idle worker takes tests from a busy one), each worker and the
# processes its tests start on one torch thread: two single-threaded processes keep two cores busier than
# one process of two threads (most of a test's time is Python and process start-up). `-n 0` runs serially.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# --durations=25: the slowest tests, printed at the end of every run (where the suite's time goes); add
# --cpu_report 25 for the same list in CPU seconds (child processes included), steadier on a shared machine
.venv/bin/python -m pytest -n "${TEST_WORKERS:-auto}" --dist worksteal --durations=25 tests/unit tests/e2e "$@"
