#!/usr/bin/env bash
# Start or stop a throw-away ZooKeeper (Debian's `zookeeper` package) on 127.0.0.1
# for the test suite: one standalone server, or an ensemble of N servers whose
# client, quorum and election ports are all free loopback ports.
#   scripts/zookeeper.sh start DIR [N]  -> prints the connect string (HOST:PORT[,...])
#                                          once every server serves (N=1: standalone)
#   scripts/zookeeper.sh stop DIR       -> stops every server started under DIR
#   scripts/zookeeper.sh kill DIR I     -> SIGKILL server I (1..N) of an ensemble
#   scripts/zookeeper.sh restart DIR I  -> start server I again (same ports and data)
#   scripts/zookeeper.sh mode DIR I     -> leader, follower, standalone, "not serving" or down
# Servers answer the four-letter words `ruok`, `srvr` and `stat` (4lw.commands.whitelist).
set -eu
cmd=${1:?start|stop|kill|restart|mode}; dir=${2:?directory}
cp=/etc/zookeeper/conf:/usr/share/java/zookeeper.jar

freePorts() {  # N distinct free loopback ports, all bound at once so none repeats
  python3 - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

mode() {  # what the server on port $1 says of itself (`srvr`), or "down"
  python3 - "$1" <<'PY' 2>/dev/null || echo down
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
s.sendall(b"srvr")
reply = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    reply += chunk
text = reply.decode("utf-8", "replace")
modes = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Mode:")]
print(modes[0] if modes else "not serving")
PY
}

launch() {  # launch SERVERDIR MAINCLASS: run one JVM in the background
  nohup java -Xmx128m -Dzookeeper.log.dir="$1" -Dzookeeper.root.logger=WARN,CONSOLE \
    -cp "$cp" "$2" "$1/zoo.cfg" > "$1/zookeeper.log" 2>&1 < /dev/null &
  echo $! > "$1/pid"
}

waitServing() {  # waitServing SERVERDIR: until its `srvr` reports a mode
  local port; port=$(cat "$1/port")
  for _ in $(seq 1 240); do
    case $(mode "$port") in leader|follower|standalone) return 0 ;; esac
    kill -0 "$(cat "$1/pid")" 2>/dev/null || { echo "zookeeper died:" >&2; tail -20 "$1/zookeeper.log" >&2; return 1; }
    sleep 0.25
  done
  echo "zookeeper on port $port did not serve within 60 s" >&2; tail -20 "$1/zookeeper.log" >&2; return 1
}

common() {  # common DATADIR CLIENTPORT: the settings every server shares
  cat <<CFG
tickTime=500
dataDir=$1
clientPort=$2
clientPortAddress=127.0.0.1
maxClientCnxns=0
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr,stat
minSessionTimeout=1000
maxSessionTimeout=60000
CFG
}

case $cmd in
start)
  n=${3:-1}
  mkdir -p "$dir"
  if [ "$n" -le 1 ]; then
    port=$(freePorts 1)
    mkdir -p "$dir/data"
    common "$dir/data" "$port" > "$dir/zoo.cfg"
    echo "$port" > "$dir/port"
    launch "$dir" org.apache.zookeeper.server.ZooKeeperServerMain
    waitServing "$dir" || exit 1
    echo "127.0.0.1:$port"
    exit 0
  fi
  read -r -a ports <<< "$(freePorts $((3 * n)))"
  connect=""
  for i in $(seq 1 "$n"); do
    server="$dir/$i"; mkdir -p "$server/data"; echo "$i" > "$server/data/myid"
    client=${ports[$((3 * (i - 1)))]}
    echo "$client" > "$server/port"
    {
      common "$server/data" "$client"
      echo "initLimit=20"
      echo "syncLimit=5"
      for j in $(seq 1 "$n"); do
        echo "server.$j=127.0.0.1:${ports[$((3 * (j - 1) + 1))]}:${ports[$((3 * (j - 1) + 2))]}"
      done
    } > "$server/zoo.cfg"
    connect="$connect${connect:+,}127.0.0.1:$client"
  done
  echo "$connect" > "$dir/connect"
  for i in $(seq 1 "$n"); do
    launch "$dir/$i" org.apache.zookeeper.server.quorum.QuorumPeerMain
  done
  for i in $(seq 1 "$n"); do waitServing "$dir/$i" || exit 1; done
  echo "$connect" ;;
stop)
  for pidfile in "$dir/pid" "$dir"/*/pid; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done ;;
kill)
  i=${3:?server number}
  kill -9 "$(cat "$dir/$i/pid")" 2>/dev/null || true ;;
restart)
  i=${3:?server number}
  launch "$dir/$i" org.apache.zookeeper.server.quorum.QuorumPeerMain
  waitServing "$dir/$i" ;;
mode)
  i=${3:?server number}
  mode "$(cat "$dir/$i/port")" ;;
*)
  echo "unknown command $cmd" >&2; exit 2 ;;
esac
