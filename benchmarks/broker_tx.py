"""
Transaction throughput of the broker (issue 6, Performance).

Starts a fresh broker (C{twistd -n metaq}, generated server.ini, free
loopback port) and, for every transaction size (1, 10 and 100 messages of
4 KiB by default), runs local transactions as the Java producer does: BEGIN,
the puts one at a time, then COMMIT_ONE_PHASE, each request waiting for its
reply, in two shapes:

* C{--shared N} (first): N producers on ONE connection, matched by opaque.
  This is the Java client's shape: all threads of a producer share one
  connection per broker, so the broker sees up to N requests in flight on
  one socket; the requests sent after one read of replies go out in one
  write, as the Java client's write queue sends what its threads put in
  meanwhile.
* C{--producers P}: P connections with one producer each.

A consumer then reads everything back to check that every committed message
is there.  Prints committed msgs/s, MB/s, transactions/s, the commit latency
p50/p99 and the broker's CPU time per message.

    .venv/bin/python benchmarks/broker_tx.py
    .venv/bin/python benchmarks/broker_tx.py --messages 20000 --sizes 1,10,100 \\
        --shared 16 --producers 1,16 --flush 1 --unflush 1000

MetaQ published 6,750 msg/s for 4 KiB messages in transactions.

With --opcodes the broker's reactor thread counts the Python bytecodes
each function runs while the transactions are sent (as
benchmarks/loneput.py --opcodes does), and a report per transaction
follows each row; the rates of such a run are those of a traced broker.

    .venv/bin/python benchmarks/broker_tx.py --messages 500 --sizes 1 --shared 1 \\
        --producers= --unflush 0 --opcodes
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from twisted.internet import defer, endpoints, protocol, task

from metamorphosis.protocol.commands import CommandParser, ValueCommand
from metamorphosis.protocol.records import checksum, decodeRecords

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from broker import awaitListening, freePort  # noqa: E402 (benchmarks/broker.py)
from loneput import countingOpcodes, opcodeReport  # noqa: E402 (benchmarks/loneput.py)

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


class SharedConnection(protocol.Protocol):
    """
    One connection for many producers: each request carries its own
    opaque and its reply is matched by it.  The requests the producers send
    while the replies of one read are handled go out in one write.
    """

    def connectionMade(self):
        self.parser = CommandParser(maxBodySize=64 * MiB)
        self.pending = {}
        self.nextOpaque = 0
        self.outbox = None

    def dataReceived(self, data):
        self.outbox = []
        try:
            for reply in self.parser.parse(data):
                self.pending.pop(reply.opaque).callback(reply)
        finally:
            outbox, self.outbox = self.outbox, None
            if outbox:
                self.transport.write(b"".join(outbox))

    def call(self, head, body=b""):
        """
        Send the request C{head} (its header line without the opaque)
        C{body} and return a Deferred for its reply.
        """
        self.nextOpaque += 1
        d = self.pending[self.nextOpaque] = defer.Deferred()
        data = b"%s %d\r\n%s" % (head, self.nextOpaque, body)
        if self.outbox is None:
            self.transport.write(data)
        else:
            self.outbox.append(data)
        return d


class OwnConnection:
    """
    A producer's own connection (the requests' opaques do not matter).
    """

    def __init__(self, connection):
        self.connection = connection

    def call(self, head, body=b""):
        return self.connection.call(b"%s 0\r\n%s" % (head, body))


async def connectAll(reactor, port, n, factory=Connection):
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    return await defer.gatherResults(
        [endpoints.connectProtocol(endpoint, factory()) for _ in range(n)]
    )


def check(reply, what):
    if getattr(reply, "code", None) != 200:
        raise RuntimeError("%s failed: %r" % (what, reply))
    return reply


async def produce(reactor, port, producers, perTransaction, total, size, run, shared=False):
    """
    Run C{total} messages in transactions of C{perTransaction} on
    C{producers} producers, each with its own connection or (C{shared})
    all on one.
    """
    if shared:
        [connection] = await connectAll(reactor, port, 1, SharedConnection)
        connections = [connection] * producers
        callers = connections
    else:
        connections = await connectAll(reactor, port, producers)
        callers = [OwnConnection(c) for c in connections]
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
            check(await connection.call(b"transaction %s s BEGIN" % key), "BEGIN")
            for i in range(perTransaction):
                check(
                    await connection.call(
                        b"put %s 0 %d 0 %d %s" % (TOPIC, size, crc, key), payload
                    ),
                    "put",
                )
            start = time.perf_counter()
            check(
                await connection.call(b"transaction %s s COMMIT_ONE_PHASE" % key), "COMMIT"
            )
            latencies.append(time.perf_counter() - start)
        return n

    start = time.perf_counter()
    done = await defer.gatherResults(
        [defer.ensureDeferred(produceOn(i, c)) for i, c in enumerate(callers)]
    )
    elapsed = time.perf_counter() - start
    for c in set(connections):
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
    awaitListening(process, [("127.0.0.1", port)], "the broker in " + directory)
    return process, port


async def main(reactor, options):
    sizes = [int(s) for s in options.sizes.split(",")]
    # The headline rows first: N producers sharing one connection.
    shapes = [(int(n), True) for n in options.shared.split(",") if n] + [
        (int(p), False) for p in options.producers.split(",") if p
    ]
    print(
        "transactions of N x %d B messages, flushTxLogAtCommit=%d, unflushThreshold=%d"
        % (options.size, options.flush, options.unflush)
    )
    print(
        "%-6s %-11s %10s %8s %8s %10s %10s %12s"
        % ("N", "producers", "msgs/s", "MB/s", "tx/s", "commit p50", "commit p99",
           "broker us/msg")
    )
    run = 0
    for perTransaction in sizes:
        for producers, shared in shapes:
            run += 1
            if options.broker:
                directory, process, port = None, None, options.broker
            else:
                directory = tempfile.mkdtemp(prefix="metaq-txbench-")
                counts = os.path.join(directory, "opcodes.json")
                with countingOpcodes(directory, counts, options.opcodes):
                    process, port = startBroker(directory, options)
            pid = process.pid if process is not None else options.pid
            tracing = options.opcodes and process is not None
            try:
                if tracing:
                    process.send_signal(signal.SIGUSR2)
                    await task.deferLater(reactor, 0.2, lambda: None)
                cpu = cpuSeconds(pid)
                elapsed, messages, latencies = await produce(
                    reactor, port, producers, perTransaction, options.messages,
                    options.size, run, shared,
                )
                cpu = cpuSeconds(pid) - cpu
                if tracing:
                    process.send_signal(signal.SIGUSR1)
                    await task.deferLater(reactor, 0.5, lambda: None)
                stored = await countMessages(reactor, port, messages * (20 + options.size))
                if stored != messages and process is not None:
                    raise RuntimeError("%d messages committed, %d stored" % (messages, stored))
                p = lambda f: latencies[min(len(latencies) - 1, int(f * len(latencies)))] * 1000
                print(
                    "%-6d %-11s %10.0f %8.1f %8.0f %8.2fms %8.2fms %12.0f"
                    % (
                        perTransaction,
                        ("1 conn x%d" if shared else "%d conns") % (producers,),
                        messages / elapsed,
                        messages * options.size / elapsed / MiB,
                        messages / perTransaction / elapsed, p(0.5), p(0.99),
                        cpu / messages * 1e6,
                    ),
                    flush=True,
                )
                if tracing:
                    opcodeReport(counts, messages // perTransaction, options.top,
                                 "transaction")
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
    parser.add_argument(
        "--shared", default="16",
        help="producers sharing one connection, per row (the Java client's shape)",
    )
    parser.add_argument("--producers", default="1,16", help="producers with a connection each")
    parser.add_argument("--flush", type=int, default=1, help="flushTxLogAtCommit")
    parser.add_argument("--unflush", type=int, default=1000, help="unflushThreshold")
    parser.add_argument(
        "--broker", type=int, help="use the running broker on this loopback port "
        "(its topics must accept bench-tx; stored counts are then not checked)"
    )
    parser.add_argument("--pid", type=int, help="pid of that broker (for its CPU time)")
    parser.add_argument("--opcodes", action="store_true",
                        help="count the Python bytecodes the broker's reactor thread runs "
                             "per transaction")
    parser.add_argument("--top", type=int, default=25, help="rows of the bytecode report")
    options = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, options)))
