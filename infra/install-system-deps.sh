#!/usr/bin/env bash
# Installs the Debian packages cyxwiz needs, only those missing. Run by `make test` / `make demo`.
# Needs root (or sudo); where neither is available it says what is missing and goes on, so the tests
# that need a package skip with that reason instead of the whole run failing here.
set -euo pipefail

# binary -> package
declare -A wanted=(
  [bwrap]=bubblewrap
  [openssl]=openssl
  [dockerd]=docker.io
  [runsc]=runsc
  [pg_ctlcluster]=postgresql
  [ip]=iproute2
  [setpriv]=util-linux
  [prlimit]=util-linux
  [softhsm2-util]=softhsm2
  [chromium]=chromium
)

missing=()
for bin in "${!wanted[@]}"; do
  command -v "$bin" >/dev/null 2>&1 || missing+=("${wanted[$bin]}")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
# unique
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "installing Debian packages: ${missing[*]}"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
    echo "warning: not root and no sudo; missing packages: ${missing[*]}" >&2
    exit 0
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
