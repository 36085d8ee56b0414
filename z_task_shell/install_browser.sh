#!/usr/bin/env bash
# The headless browser of the web page test (tests/e2e/test_serve_page.py): Debian's chromium and
# chromium-driver, which Selenium drives. Idempotent: nothing to do when both are on PATH; else apt-get (root,
# or sudo when there is one). run_tests.sh calls it before pytest.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  SUDO=$(command -v sudo || true)
  if [ -z "$SUDO" ]; then  # under CI a failure; elsewhere the page test is skipped, saying why
    echo "install_browser.sh: apt-get install chromium chromium-driver needs root or sudo" >&2
    [ "${CI:-}" = true ] && exit 1
    exit 0
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium chromium-driver
