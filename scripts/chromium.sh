#!/usr/bin/env bash
# Make Debian's Chromium available for the browser test (installs it with apt when missing) and
# print its path. Playwright drives this binary: no browser is downloaded. On failure it prints
# nothing on stdout and one line on stderr, and the browser test skips saying why.
set -euo pipefail
for b in chromium chromium-browser; do
    if command -v "$b" >/dev/null; then command -v "$b"; exit 0; fi
done
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
        >/dev/null 2>&1 || { echo "apt-get install chromium failed" >&2; exit 1; }
    command -v chromium
else
    echo "chromium is not installed and apt-get is unavailable (or not root)" >&2; exit 1
fi
