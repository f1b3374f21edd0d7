"""
Throughput and latency of the broker (issue 4, Performance).

For each flush policy (default: unflushThreshold=1000; group commit:
unflushThreshold=0) it starts a fresh broker (C{twistd -n metaq} with a
generated server.ini on a free loopback port), then for every P producer
connections x S bytes it sends COUNT sync puts (one in flight per
connection), and finally C consumers each fetch everything with 1 MiB gets.
It prints msgs/s, MB/s, put latency p50/p99 and the broker's peak RSS.

    .venv/bin/python benchmarks/broker.py                  # the full matrix
    .venv/bin/python benchmarks/broker.py --count 20000 --producers 1,10 --sizes 1024
    .venv/bin/python benchmarks/broker.py --broker 127.0.0.1:8123 --pid 1234

With --broker it uses a running broker instead (its topics must accept
C{bench-*}; --pid gives the process for the RSS figures).
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


class Progress:
    """
    A one-line progress bar on stderr when it is a terminal.
    """

    def __init__(self, label, total):
        self.label, self.total, self.done = label, total, 0
        self.enabled = sys.stderr.isatty()
        self._last = 0.0

    def advance(self, n=1):
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._last > 0.1 or self.done >= self.total):
            self._last = now
            filled = int(30 * self.done / self.total)
            sys.stderr.write(f"\r{self.label:<28} [{'#' * filled}{' ' * (30 - filled)}] "
                             f"{100 * self.done // self.total:3d}%")
            sys.stderr.flush()

    def finish(self):
        if self.enabled:
            sys.stderr.write("\r" + " " * 72 + "\r")
            sys.stderr.flush()


class BrokerProcess:
    """
    The broker's peak resident set size (VmHWM of /proc/<pid>/status) and
    the CPU time it used (so that figures taken on a busy machine still say
    what one message costs the broker).
    """

    def __init__(self, pid):
        self.pid = pid

    def cpuSeconds(self):
        if self.pid is None:
            return float("nan")
        try:
            with open(f"/proc/{self.pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            return float("nan")

    def peakMiB(self):
        if self.pid is None:
            return float("nan")
        try:
            with open(f"/proc/{self.pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")


class Connection(protocol.Protocol):
    """
    One client connection with one request in flight at a time.
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


async def connectAll(reactor, host, port, n):
    endpoint = endpoints.TCP4ClientEndpoint(reactor, host, port)
    return await defer.gatherResults(
        [endpoints.connectProtocol(endpoint, Connection()) for _ in range(n)])


async def produce(reactor, host, port, topic, producers, size, count, progress):
    connections = await connectAll(reactor, host, port, producers)
    payload = os.urandom(size)
    header = b"put %s 0 %d 0 %d " % (topic.encode(), size, checksum(payload))
    latencies = []
    remaining = [count]

    async def run(connection):
        opaque = 0
        while remaining[0] > 0:
            remaining[0] -= 1
            opaque += 1
            start = time.perf_counter()
            reply = await connection.call(header + b"%d\r\n" % opaque + payload)
            latencies.append(time.perf_counter() - start)
            if reply.code != 200:
                raise RuntimeError(f"put failed: {reply.code} {reply.body!r}")
            progress.advance()

    start = time.perf_counter()
    await defer.gatherResults([defer.ensureDeferred(run(c)) for c in connections])
    elapsed = time.perf_counter() - start
    for c in connections:
        c.transport.loseConnection()
    latencies.sort()
    return elapsed, latencies


async def waitFlushed(reactor, connection, topic, size):
    """
    Wait until the broker's flushed end of C{topic} covers everything
    produced (with C{unflushThreshold} the tail waits for the flush timer),
    so that the consumer figures measure reading only.
    """
    while True:
        reply = await connection.call(b"offset %s g 0 %d 0\r\n" % (topic.encode(), 2**62))
        if int(reply.body) >= size:
            return
        await task.deferLater(reactor, 0.2, lambda: None)


async def consume(reactor, host, port, topic, size, consumers, expected, progress):
    connections = await connectAll(reactor, host, port, consumers)
    await waitFlushed(reactor, connections[0], topic, expected * (20 + size))

    async def run(index, connection):
        offset, messages, received = 0, 0, 0
        while messages < expected:
            reply = await connection.call(
                b"get %s g%d 0 %d %d %d\r\n" % (topic.encode(), index, offset, MiB, messages))
            if not isinstance(reply, ValueCommand):
                if reply.code == 404:
                    # Not flushed yet (unflushThreshold): wait for the timer.
                    await task.deferLater(reactor, 0.05, lambda: None)
                    continue
                raise RuntimeError(f"get failed: {reply.code} {reply.body!r}")
            records, consumed = decodeRecords(reply.data, verify=False)
            messages += len(records)
            received += consumed
            offset += consumed
            progress.advance(len(records))
        return messages, received

    start = time.perf_counter()
    results = await defer.gatherResults(
        [defer.ensureDeferred(run(i, c)) for i, c in enumerate(connections)])
    elapsed = time.perf_counter() - start
    for c in connections:
        c.transport.loseConnection()
    return elapsed, sum(m for m, _ in results), sum(b for _, b in results)


def percentile(values, fraction):
    return values[min(len(values) - 1, int(fraction * len(values)))] * 1000


def freePort():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def startBroker(policy, directory):
    port = freePort()
    ini = os.path.join(directory, "server.ini")
    with open(ini, "w") as f:
        f.write(f"[system]\nbrokerId=0\nnumPartitions=1\nserverPort={port}\n"
                f"unflushThreshold={0 if policy == 'group' else 1000}\nunflushInterval=10000\n"
                f"dataPath={os.path.join(directory, 'data')}\nmaxTransferSize={MiB}\n"
                "[zookeeper]\nzk.zkEnable=false\n[topic=bench-*]\n")
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    process = subprocess.Popen(
        [twistd, "--nodaemon", "--pidfile=", "--logfile", os.path.join(directory, "broker.log"),
         "metaq", "--config", ini, "--port", f"tcp:{port}:interface=127.0.0.1"],
        cwd=directory)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, port
        except OSError:
            if process.poll() is not None:
                raise RuntimeError("the broker did not start; see " + directory)
            time.sleep(0.1)
    raise RuntimeError("the broker did not listen in time")


async def runPolicy(reactor, args, policy, host, port, broker):
    print(f"\n== flush policy: {policy} "
          f"({'unflushThreshold=0, group commit' if policy == 'group' else 'unflushThreshold=1000'})")
    print(f"{'producers':>9} {'size':>6} {'msgs':>8} {'msgs/s':>9} {'MB/s':>7} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'peak RSS MiB':>12} {'broker CPU us/msg':>17}")
    topics = []
    for producers in args.producers:
        for size in args.sizes:
            topic = f"bench-{policy}-{producers}-{size}-{int(time.time())}"
            progress = Progress(f"put P={producers} S={size}", args.count)
            cpu = broker.cpuSeconds()
            elapsed, latencies = await produce(
                reactor, host, port, topic, producers, size, args.count, progress)
            cpu = broker.cpuSeconds() - cpu
            progress.finish()
            rate = args.count / elapsed
            print(f"{producers:>9} {size:>6} {args.count:>8} {rate:>9.0f} "
                  f"{rate * size / 1e6:>7.1f} {percentile(latencies, 0.5):>7.2f} "
                  f"{percentile(latencies, 0.99):>7.2f} {broker.peakMiB():>12.0f} "
                  f"{cpu / args.count * 1e6:>17.0f}")
            topics.append((topic, size))
    print(f"{'consumers':>9} {'size':>6} {'msgs':>8} {'msgs/s':>9} {'MB/s':>7} "
          f"{'':>7} {'':>7} {'peak RSS MiB':>12} {'broker CPU us/msg':>17}")
    for topic, size in topics[-len(args.sizes):]:
        progress = Progress(f"get C={args.consumers} S={size}", args.count * args.consumers)
        cpu = broker.cpuSeconds()
        elapsed, messages, received = await consume(
            reactor, host, port, topic, size, args.consumers, args.count, progress)
        cpu = broker.cpuSeconds() - cpu
        progress.finish()
        print(f"{args.consumers:>9} {size:>6} {messages:>8} {messages / elapsed:>9.0f} "
              f"{received / elapsed / 1e6:>7.1f} {'':>7} {'':>7} {broker.peakMiB():>12.0f} "
              f"{cpu / messages * 1e6:>17.1f}")


async def main(reactor, args):
    if args.broker:
        host, port = args.broker.rsplit(":", 1)
        for policy in args.flush:
            await runPolicy(reactor, args, policy, host, int(port), BrokerProcess(args.pid))
        return
    for policy in args.flush:
        directory = tempfile.mkdtemp(prefix="metaq-bench-")
        process, port = startBroker(policy, directory)
        try:
            await runPolicy(reactor, args, policy, "127.0.0.1", port, BrokerProcess(process.pid))
        finally:
            process.terminate()
            process.wait(30)
            shutil.rmtree(directory, ignore_errors=True)


def parseArguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ints = lambda text: [int(x) for x in text.split(",")]
    parser.add_argument("--count", type=int, default=100000, help="puts per row")
    parser.add_argument("--producers", type=ints, default=[1, 10, 50])
    parser.add_argument("--sizes", type=ints, default=[256, 1024, 4096])
    parser.add_argument("--consumers", type=int, default=1)
    parser.add_argument("--flush", type=lambda t: t.split(","), default=["default", "group"],
                        help="default, group or both (comma separated)")
    parser.add_argument("--broker", help="host:port of a running broker")
    parser.add_argument("--pid", type=int, help="pid of that broker (for RSS)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parseArguments(sys.argv[1:])
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, arguments)))
