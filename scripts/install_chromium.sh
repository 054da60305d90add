#!/usr/bin/env bash
# Install Debian's chromium for the browser tests (tests/label, marked `browser`), if missing.
# Playwright drives it through executable_path=/usr/bin/chromium: `playwright install`
# downloads its own browsers from a CDN, which CI machines here cannot reach.
# Idempotent: does nothing when /usr/bin/chromium exists. Needs root (CI runs as root).
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install_chromium.sh: /usr/bin/chromium is missing and installing it needs root (apt-get)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium
/usr/bin/chromium --version
