#!/usr/bin/env bash
# Install the real browser the web-page tests drive (tests/test_review_page.py): Debian's Chromium and its driver.
#
#   bash scripts/setup_browser.sh
#
# Playwright (a Python package of the `dev` extra, installed by scripts/setup_env.sh) drives this system browser;
# its own browser download cannot work without internet access, so it is never used. Runs as root (apt-get); does
# nothing when /usr/bin/chromium is there. Set MEDICRAFT_CHROMIUM to use another Chromium binary instead.
set -euo pipefail

chromium="${MEDICRAFT_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$chromium" ]; then
    echo "[setup-browser] $chromium is ready ($("$chromium" --version 2>/dev/null || echo 'version unknown'))"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "[setup-browser] no $chromium and no apt-get: install Chromium and set MEDICRAFT_CHROMIUM to its binary" >&2
    exit 1
fi
echo "[setup-browser] installing chromium and chromium-driver (Debian packages)"
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends chromium chromium-driver
"$chromium" --version
