#!/usr/bin/env bash
# Install the system libraries kernelight needs, when missing. Runs apt-get only as root;
# otherwise prints the command to run. Idempotent and quiet when everything is present.
#   libusb-1.0-0  : needed by open3d's wheel (import open3d fails without it)
#   chromium, chromium-driver : headless browser for the viewer tests (only with --browser)
set -euo pipefail

want=()
if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then
  want+=(libusb-1.0-0)
fi
if [[ "${1:-}" == "--browser" ]]; then
  command -v chromium >/dev/null 2>&1 || want+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || want+=(chromium-driver)
fi
[[ ${#want[@]} -eq 0 ]] && exit 0

if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "kernelight: installing system packages: ${want[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
else
  echo "kernelight: missing system packages: ${want[*]}" >&2
  echo "  install them with: sudo apt-get install ${want[*]}" >&2
  exit 1
fi
