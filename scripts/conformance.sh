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
# The replay starts brokers on the fixed ports of the recorded configs: one
# replay at a time on this machine, and none while something else holds a port.
exec 9> "${TMPDIR:-/tmp}/metaq-conformance.lock"
flock 9
for port in 8123 8132 8133; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "conformance: 127.0.0.1:$port is in use by another program; stop it first" >&2
    exit 1
  fi
done
PATH=$PWD/.venv/bin:$PATH exec bash "$runner" --zookeeper "$zk" --ha 'twistd -n --pidfile= metaq --config {conf}'
