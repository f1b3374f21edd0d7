#!/usr/bin/env bash
# Prepare a checkout: a virtual environment in .venv with metamorphosis installed
# in development mode (so `twistd metaq` finds the plugin in twisted/plugins/).
#   scripts/setup.sh          runtime dependencies
#   scripts/setup.sh --test   plus what the test suite needs (hypothesis, SQL drivers, ZooKeeper)
set -eu
cd "$(dirname "$0")/.."
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" > /dev/null
}
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "metamorphosis needs Python 3.11 or newer (found $(python3 --version 2>&1))" >&2; exit 1
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv 2>/dev/null || { rm -rf .venv; apt_install python3-venv; python3 -m venv .venv; }
fi
extras=
[ "${1:-}" = --test ] && extras="[test]"
sum=$(cat setup.cfg pyproject.toml | cksum | cut -d' ' -f1)
stamp=".venv/.installed$extras-$sum"
# A test installation includes the runtime one.
if [ ! -f "$stamp" ] && [ ! -f ".venv/.installed[test]-$sum" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".$extras" --config-settings editable_mode=compat
  touch "$stamp"
fi
if [ "${1:-}" = --test ] && [ ! -f /usr/share/java/zookeeper.jar ]; then
  apt_install zookeeper
fi
# Headless Chromium for the dashboard page tests (skipped without it).
if [ "${1:-}" = --test ] && ! command -v chromium > /dev/null; then
  apt_install chromium || echo "setup.sh: chromium could not be installed; the browser tests will be skipped" >&2
fi
# A private MariaDB with binary logging for the change-stream tests (they start
# their own mariadbd; skipped without it).
if [ "${1:-}" = --test ] && [ ! -x /usr/sbin/mariadbd ]; then
  apt_install mariadb-server || echo "setup.sh: mariadb-server could not be installed; the change-stream tests will be skipped" >&2
fi
