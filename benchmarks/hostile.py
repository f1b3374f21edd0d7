"""
What hostile clients cost the broker (issue 10, items 2, 3 and 6): starts a
fresh broker (C{twistd -n metaq}, generated server.ini, free loopback port)
and prints its memory and log volume under three attacks:

- slow loris: N connections each declare a 64 MiB put, send 60 MiB of it
  and then trickle a byte every 2 s; printed: the broker's resident memory
  once they sent, its peak, and how long until each connection was closed
  (and with which reply);
- abandoned XA transactions: 40 x (XA BEGIN without timeout, one 4 MiB
  put, close the connection); printed: resident memory right after and
  once C{maxTxTimeoutInSeconds} passed;
- log flood: 20,000 puts to an illegal topic name; printed: the bytes the
  broker logged meanwhile.

    .venv/bin/python benchmarks/hostile.py
    .venv/bin/python benchmarks/hostile.py --request-seconds 10 --tx-seconds 5

Figures are the broker's (VmRSS/VmHWM of /proc/<pid>/status), on whatever
the machine is doing at the time.
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from broker import awaitListening, freePort  # noqa: E402 (benchmarks/broker.py)

MiB = 1024 * 1024


def memory(pid, field):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def startBroker(directory, system):
    ini = os.path.join(directory, "server.ini")
    with open(ini, "w") as f:
        f.write("[system]\nbrokerId=0\ndataPath=data\nunflushThreshold=0\n" + system
                + "\n[zookeeper]\nzk.zkEnable=false\n[topic=*]\n")
    port = freePort()
    log = open(os.path.join(directory, "broker.log"), "wb")
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    process = subprocess.Popen(
        [twistd, "-n", "--pidfile=", "metaq", "--config", ini,
         "--port", f"tcp:{port}:interface=127.0.0.1"],
        cwd=directory, stdout=log, stderr=subprocess.STDOUT)
    awaitListening(process, [("127.0.0.1", port)], "the broker in " + directory, attempts=600)
    return process, port, log.name


def readReply(sock, timeout):
    """
    The first reply line on C{sock}, or what happened instead.
    """
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                return data.decode(errors="replace") or "closed without reply"
            data += chunk
    except (TimeoutError, BlockingIOError):
        return None
    except OSError as e:
        return f"error {e}"
    return data.split(b"\r\n")[0].decode()


def slowLoris(port, pid, connections):
    socks = []
    for i in range(connections):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"put t 0 %d 0 -1 %d\r\n" % (64 * MiB, i))
        socks.append(sock)
    chunk = b"x" * MiB
    for sock in socks:
        try:
            for _ in range(60):
                sock.sendall(chunk)
        except OSError:
            pass  # refused and closed while sending
    sent = time.monotonic()
    print(f"slow loris: {connections} x 60 MiB sent; broker RSS {memory(pid, 'VmRSS'):.0f} MiB")
    open_ = dict(enumerate(socks))
    closed = {}
    while open_ and time.monotonic() - sent < 600:
        for i, sock in list(open_.items()):
            reply = readReply(sock, 0.01)
            if reply is not None:
                closed[i] = (time.monotonic() - sent, reply)
                del open_[i]
                continue
            try:
                sock.send(b"x")
            except OSError as e:
                closed[i] = (time.monotonic() - sent, f"send failed: {e}")
                del open_[i]
        time.sleep(2)
    for i in sorted(closed):
        seconds, reply = closed[i]
        print(f"  connection {i}: closed after {seconds:5.1f} s: {reply}")
    for i in open_:
        print(f"  connection {i}: still open after 600 s")
    print(f"  broker RSS now {memory(pid, 'VmRSS'):.0f} MiB, peak {memory(pid, 'VmHWM'):.0f} MiB")
    for sock in socks:
        sock.close()


def abandonedTransactions(port, pid, count, wait):
    before = memory(pid, "VmRSS")
    replies = []
    for n in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        key = f"XID:1:{n:04x}:01:bench"
        sock.sendall(f"transaction {key} s{n} BEGIN bench 1\r\n".encode())
        readReply(sock, 30)
        sock.sendall(b"put t 0 %d 0 -1 %s 2\r\n" % (4 * MiB, key.encode()) + b"y" * (4 * MiB))
        replies.append(readReply(sock, 30))
        sock.close()
    accepted = sum(1 for r in replies if r and r.startswith("result 200"))
    print(f"abandoned XA: {count} x (BEGIN, 4 MiB put, close), {accepted} puts accepted; "
          f"broker RSS {before:.0f} -> {memory(pid, 'VmRSS'):.0f} MiB")
    refused = [r for r in replies if r and not r.startswith("result 200")]
    if refused:
        print(f"  first refusal: {refused[0]}")
    time.sleep(wait + 2)
    print(f"  {wait + 2} s later (past maxTxTimeoutInSeconds): broker RSS "
          f"{memory(pid, 'VmRSS'):.0f} MiB")


def logFlood(port, logPath, count):
    before = os.path.getsize(logPath)
    sock = socket.create_connection(("127.0.0.1", port))
    started = time.monotonic()
    request = b"put ../x 0 5 0 -1 1\r\nhello"
    for _ in range(count):
        sock.sendall(request)
        readReply(sock, 30)
    elapsed = time.monotonic() - started
    sock.close()
    time.sleep(0.5)
    print(f"log flood: {count} puts to '../x' in {elapsed:.1f} s; the broker logged "
          f"{os.path.getsize(logPath) - before} bytes")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--request-seconds", type=int, default=60,
                        help="maxRequestSeconds of the broker (default 60)")
    parser.add_argument("--tx-seconds", type=int, default=60,
                        help="maxTxTimeoutInSeconds of the broker (default 60)")
    parser.add_argument("--transactions", type=int, default=40)
    parser.add_argument("--flood", type=int, default=20000)
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="metaq-hostile-")
    process = None
    try:
        # maxTransferSize large enough for the 4 MiB puts of the XA attack,
        # which would otherwise be refused as unreadable.
        process, port, logPath = startBroker(
            directory,
            f"maxRequestSeconds={args.request_seconds}\n"
            f"maxTxTimeoutInSeconds={args.tx_seconds}\nmaxTransferSize={8 * MiB}\n")
        print(f"broker pid {process.pid}, RSS at start {memory(process.pid, 'VmRSS'):.0f} MiB")
        slowLoris(port, process.pid, args.connections)
        abandonedTransactions(port, process.pid, args.transactions, args.tx_seconds)
        logFlood(port, logPath, args.flood)
    finally:
        if process is not None:
            process.terminate()
            process.wait(60)
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
