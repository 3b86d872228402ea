#!/usr/bin/env bash
# Debian's Chromium and ChromeDriver for the operator console's browser test (Selenium drives
# them). Idempotent; where they cannot be installed (no apt, not root and no sudo) it says so
# and the test reports itself skipped.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then exit 0; fi
if ! command -v apt-get >/dev/null; then
  echo "browser.sh: no apt-get here; the headless-browser test will be skipped" >&2; exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "browser.sh: not root and no sudo; the headless-browser test will be skipped" >&2; exit 0
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
