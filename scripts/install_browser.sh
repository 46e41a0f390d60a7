#!/usr/bin/env bash
# Headless Chromium + its driver from Debian, for the Serve demo page's browser test
# (tests/serve/test_serve_browser.py). Idempotent: does nothing when chromium is already installed.
# Root installs it; a user with password-less sudo installs it through sudo; anyone else is told how, and the
# suite still runs (that one test then fails, saying chromium is missing).
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
if [ "${EUID:-$(id -u)}" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    echo "install_browser.sh: chromium is missing and installing it needs root: run 'sudo make browser' once" \
         "(tests/serve/test_serve_browser.py fails until then)" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    chromium chromium-driver fonts-dejavu-core >/dev/null
command -v chromium >/dev/null
