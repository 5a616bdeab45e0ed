#!/usr/bin/env bash
# What the browser test of `flex serve` (tests/test_serve_browser.py) needs on a fresh Debian
# machine without a GPU: Debian's Chromium and its matching driver. Selenium (from the "serve"
# extra) is given the driver's path, so nothing is downloaded when the test runs. Idempotent.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    echo "install-browser: chromium and chromedriver are already installed"
else
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -q
    $sudo apt-get install -y -q --no-install-recommends chromium chromium-driver fonts-dejavu-core
fi
chromium --version 2>/dev/null
chromedriver --version
