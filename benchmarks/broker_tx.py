"""
Transaction throughput of the broker (issue 6, Performance).

Starts a fresh broker (C{twistd -n metaq}, generated server.ini, free
loopback port) and, for every transaction size (1, 10 and 100 messages of
4 KiB by default) and every number of producer connections, runs local
transactions as the Java producer does: BEGIN, the puts one at a time, then
COMMIT_ONE_PHASE, each request waiting for its reply.  A consumer then reads
everything back to check that every committed message is there.  Prints
committed msgs/s, MB/s, transactions/s and the commit latency p50/p99.

    .venv/bin/python benchmarks/broker_tx.py
    .venv/bin/python benchmarks/broker_tx.py --messages 20000 --sizes 1,10,100 \\
        --producers 1,16 --flush 1 --unflush 1000

MetaQ published 6,750 msg/s for 4 KiB messages in transactions.
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from twisted.internet import defer, endpoints, protocol, task

from metamorphosis.protocol.commands import CommandParser, ValueCommand
from metamorphosis.protocol.records import checksum, decodeRecords

MiB = 1024 * 1024
TOPIC = b"bench-tx"


class Connection(protocol.Protocol):
    """
    One producer connection, one request in flight.
    """

    def connectionMade(self):
        self.parser = CommandParser(maxBodySize=64 * MiB)
        self.pending = None

    def dataReceived(self, data):
        for reply in self.parser.parse(data):
            pending, self.pending = self.pending, None
            pending.callback(reply)

    def call(self, data):
        self.pending = defer.Deferred()
        self.transport.write(data)
        return self.pending


async def connectAll(reactor, port, n):
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    return await defer.gatherResults(
        [endpoints.connectProtocol(endpoint, Connection()) for _ in range(n)]
    )


def check(reply, what):
    if getattr(reply, "code", None) != 200:
        raise RuntimeError("%s failed: %r" % (what, reply))
    return reply


async def produce(reactor, port, producers, perTransaction, total, size, run):
    connections = await connectAll(reactor, port, producers)
    payload = os.urandom(size)
    crc = checksum(payload)
    transactions = [max(1, total // perTransaction)]
    latencies = []

    async def produceOn(index, connection):
        n = 0
        while transactions[0] > 0:
            transactions[0] -= 1
            n += 1
            key = b"TX:bench-%d-%d:%d" % (run, index, n)
            check(await connection.call(b"transaction %s s BEGIN 1\r\n" % key), "BEGIN")
            for i in range(perTransaction):
                check(
                    await connection.call(
                        b"put %s 0 %d 0 %d %s %d\r\n%s"
                        % (TOPIC, size, crc, key, i + 2, payload)
                    ),
                    "put",
                )
            start = time.perf_counter()
            check(
                await connection.call(b"transaction %s s COMMIT_ONE_PHASE 0\r\n" % key),
                "COMMIT",
            )
            latencies.append(time.perf_counter() - start)
        return n

    start = time.perf_counter()
    done = await defer.gatherResults(
        [defer.ensureDeferred(produceOn(i, c)) for i, c in enumerate(connections)]
    )
    elapsed = time.perf_counter() - start
    for c in connections:
        c.transport.loseConnection()
    latencies.sort()
    return elapsed, sum(done) * perTransaction, latencies


async def countMessages(reactor, port, expectedBytes):
    """
    Read the topic back (waiting for the flush) and count its messages.
    """
    [connection] = await connectAll(reactor, port, 1)
    offset = messages = 0
    deadline = time.monotonic() + 60
    while offset < expectedBytes and time.monotonic() < deadline:
        reply = await connection.call(
            b"get %s check 0 %d %d 1\r\n" % (TOPIC, offset, 4 * MiB)
        )
        if not isinstance(reply, ValueCommand):
            await task.deferLater(reactor, 0.1, lambda: None)
            continue
        records, consumed = decodeRecords(reply.data, verify=False)
        messages += len(records)
        offset += consumed
    connection.transport.loseConnection()
    return messages


def cpuSeconds(pid):
    """
    The CPU time (user + system, all threads) process C{pid} has used, so
    that figures from a busy machine still say what a message costs the
    broker.
    """
    if pid is None:
        return float("nan")
    with open("/proc/%d/stat" % (pid,)) as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def freePort():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def startBroker(directory, options):
    port = freePort()
    ini = os.path.join(directory, "server.ini")
    with open(ini, "w") as f:
        f.write(
            "[system]\nbrokerId=0\nnumPartitions=1\nserverPort=%d\n"
            "unflushThreshold=%d\nunflushInterval=1000\ndataPath=%s\n"
            "flushTxLogAtCommit=%d\nmaxTransferSize=%d\n"
            "[zookeeper]\nzk.zkEnable=false\n[topic=bench-*]\n"
            % (port, options.unflush, os.path.join(directory, "data"), options.flush, 4 * MiB)
        )
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    process = subprocess.Popen(
        [twistd, "-n", "--pidfile=", "metaq", "--config", ini,
         "--port", "tcp:%d:interface=127.0.0.1" % (port,)],
        cwd=directory,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process, port
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the broker did not start")


async def main(reactor, options):
    sizes = [int(s) for s in options.sizes.split(",")]
    producerCounts = [int(p) for p in options.producers.split(",")]
    print(
        "transactions of N x %d B messages, flushTxLogAtCommit=%d, unflushThreshold=%d"
        % (options.size, options.flush, options.unflush)
    )
    print(
        "%-6s %-9s %10s %8s %8s %10s %10s %12s"
        % ("N", "producers", "msgs/s", "MB/s", "tx/s", "commit p50", "commit p99",
           "broker us/msg")
    )
    run = 0
    for perTransaction in sizes:
        for producers in producerCounts:
            run += 1
            if options.broker:
                directory, process, port = None, None, options.broker
            else:
                directory = tempfile.mkdtemp(prefix="metaq-txbench-")
                process, port = startBroker(directory, options)
            pid = process.pid if process is not None else options.pid
            try:
                cpu = cpuSeconds(pid)
                elapsed, messages, latencies = await produce(
                    reactor, port, producers, perTransaction, options.messages,
                    options.size, run,
                )
                cpu = cpuSeconds(pid) - cpu
                stored = await countMessages(reactor, port, messages * (20 + options.size))
                if stored != messages and process is not None:
                    raise RuntimeError("%d messages committed, %d stored" % (messages, stored))
                p = lambda f: latencies[min(len(latencies) - 1, int(f * len(latencies)))] * 1000
                print(
                    "%-6d %-9d %10.0f %8.1f %8.0f %8.2fms %8.2fms %12.0f"
                    % (
                        perTransaction, producers, messages / elapsed,
                        messages * options.size / elapsed / MiB,
                        messages / perTransaction / elapsed, p(0.5), p(0.99),
                        cpu / messages * 1e6,
                    ),
                    flush=True,
                )
            finally:
                if process is not None:
                    process.terminate()
                    process.wait()
                    shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000, help="messages per run")
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--sizes", default="1,10,100", help="messages per transaction")
    parser.add_argument("--producers", default="1,16")
    parser.add_argument("--flush", type=int, default=1, help="flushTxLogAtCommit")
    parser.add_argument("--unflush", type=int, default=1000, help="unflushThreshold")
    parser.add_argument(
        "--broker", type=int, help="use the running broker on this loopback port "
        "(its topics must accept bench-tx; stored counts are then not checked)"
    )
    parser.add_argument("--pid", type=int, help="pid of that broker (for its CPU time)")
    options = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, options)))
