#!/usr/bin/env bash
# Set up the checkout and run a standalone broker in the foreground: port 8123,
# no ZooKeeper, data under ./data. Extra arguments go to the metaq plugin
# (e.g. --config server.ini, --port tcp:9000:interface=127.0.0.1).
set -eu
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/twistd --nodaemon --pidfile= metaq "$@"
