#!/usr/bin/env bash
# Replay the Java client/broker captures of ../shared against our broker started
# through `twistd metaq` (../shared/conformance/run-against.sh), with ZooKeeper
# and the HA scenarios.   usage: scripts/conformance.sh ZOOKEEPER_HOST:PORT
set -u
cd "$(dirname "$0")/.."
zk=${1:?ZooKeeper host:port}
runner=../shared/conformance/run-against.sh
if [ ! -f "$runner" ]; then
  echo "conformance: $runner not found (the suite lives beside the checkout); not run"
  exit 0
fi
PATH=$PWD/.venv/bin:$PATH exec bash "$runner" --zookeeper "$zk" --ha 'twistd -n --pidfile= metaq --config {conf}'
