#!/usr/bin/env bash
# Start or stop a throw-away standalone ZooKeeper (Debian's `zookeeper` package) on
# 127.0.0.1 for the test suite.
#   scripts/zookeeper.sh start DIR   -> prints HOST:PORT once it answers `ruok`
#   scripts/zookeeper.sh stop DIR
set -eu
cmd=${1:?start|stop}; dir=${2:?directory}
case $cmd in
start)
  mkdir -p "$dir/data"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  cat > "$dir/zoo.cfg" <<CFG
tickTime=500
dataDir=$dir/data
clientPort=$port
clientPortAddress=127.0.0.1
maxClientCnxns=0
admin.enableServer=false
4lw.commands.whitelist=ruok,stat
minSessionTimeout=1000
maxSessionTimeout=60000
CFG
  cp=/etc/zookeeper/conf:/usr/share/java/zookeeper.jar
  nohup java -Xmx256m -Dzookeeper.log.dir="$dir" -Dzookeeper.root.logger=WARN,CONSOLE \
    -cp "$cp" org.apache.zookeeper.server.ZooKeeperServerMain "$dir/zoo.cfg" \
    > "$dir/zookeeper.log" 2>&1 < /dev/null &
  echo $! > "$dir/pid"
  for _ in $(seq 1 120); do
    if python3 - "$port" <<'PY' 2>/dev/null; then echo "127.0.0.1:$port"; exit 0; fi
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)
s.sendall(b"ruok"); sys.exit(0 if s.recv(4) == b"imok" else 1)
PY
    kill -0 "$(cat "$dir/pid")" 2>/dev/null || { echo "zookeeper died:" >&2; tail -20 "$dir/zookeeper.log" >&2; exit 1; }
    sleep 0.5
  done
  echo "zookeeper did not answer within 60 s" >&2; tail -20 "$dir/zookeeper.log" >&2; exit 1 ;;
stop)
  [ -f "$dir/pid" ] && kill "$(cat "$dir/pid")" 2>/dev/null || true ;;
esac
