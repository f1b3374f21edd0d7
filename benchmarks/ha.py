"""
The cost of replication (issue 7, Performance).

1. Sync replication: put throughput and latency of a samsa master with its
   gregor slave, against the same broker without a slave (P producer
   connections, one put in flight each, S-byte messages).
2. Async replication: the lag of a metaslave (its C{replication_lag_bytes}
   stat, sampled every 50 ms) while the master takes the same load, and how
   long it needs to catch up afterwards.

Every broker is a fresh C{twistd -n metaq} on a free loopback port. The
async part needs a ZooKeeper: C{--zookeeper HOST:PORT}, or C{METAQ_TEST_ZK}
(C{export METAQ_TEST_ZK=$(bash scripts/zookeeper.sh start /tmp/zk-bench)}).

    .venv/bin/python benchmarks/ha.py
    .venv/bin/python benchmarks/ha.py --count 50000 --producers 10 --size 1024 --flush group
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid

from twisted.internet import defer, task

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from broker import BrokerProcess, Progress, connectAll, percentile, produce  # noqa: E402

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def freePort():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """
    One broker process in a directory of its own.
    """

    def __init__(self, root, name, flush, zookeeper=None, zkRoot="/meta", plugin=None, properties=""):
        self.directory = os.path.join(root, name)
        os.makedirs(self.directory)
        self.port = freePort()
        ini = os.path.join(self.directory, "server.ini")
        with open(ini, "w") as f:
            f.write(
                f"[system]\nbrokerId=5\nhostName=127.0.0.1\nnumPartitions=1\nserverPort={self.port}\n"
                f"unflushThreshold={0 if flush == 'group' else 1000}\nunflushInterval=10000\n"
                f"dataPath=data\nmaxTransferSize=1048576\n"
                f"[zookeeper]\nzk.zkEnable={'true' if zookeeper else 'false'}\n"
                f"zk.zkConnect={zookeeper or ''}\nzk.zkRoot={zkRoot}\nzk.zkSyncTimeMs=0\n"
                "[topic=bench]\n"
            )
        if plugin is not None:
            with open(os.path.join(self.directory, plugin), "w") as f:
                f.write(properties)
        self.process = subprocess.Popen(
            [TWISTD, "--nodaemon", "--pidfile=", "--logfile", "broker.log", "metaq", "--config", ini,
             "--port", f"tcp:{self.port}:interface=127.0.0.1"],
            cwd=self.directory,
        )
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError("broker did not start; see " + self.directory)
                time.sleep(0.1)
        raise RuntimeError("broker did not listen in time")

    def stop(self):
        self.process.terminate()
        self.process.wait(30)


async def warmUp(reactor, port, attempts=200):
    """
    Wait until a put succeeds (a sync master needs its slave link first).
    """
    [connection] = await connectAll(reactor, "127.0.0.1", port, 1)
    try:
        for _ in range(attempts):
            reply = await connection.call(b"put bench 0 4 0 -1 1\r\nwarm")
            if reply.code == 200:
                return
            await task.deferLater(reactor, 0.1, lambda: None)
        raise RuntimeError(f"puts keep failing: {reply.code} {reply.body!r}")
    finally:
        connection.transport.loseConnection()


async def measure(reactor, args, port, label, brokers):
    """
    Put throughput and latency through the broker on C{port}, and the CPU
    time C{brokers} (all processes involved) spent per message: on a busy
    machine the rate follows the CPU available, the CPU cost does not.
    """
    await warmUp(reactor, port)
    processes = [BrokerProcess(broker.process.pid) for broker in brokers]
    cpu = sum(process.cpuSeconds() for process in processes)
    progress = Progress(label, args.count)
    elapsed, latencies = await produce(reactor, "127.0.0.1", port, "bench", args.producers, args.size,
                                       args.count, progress)
    progress.finish()
    cpu = sum(process.cpuSeconds() for process in processes) - cpu
    rate = args.count / elapsed
    print(f"{label:<28} {rate:>9.0f} {rate * args.size / 1e6:>7.1f} "
          f"{percentile(latencies, 0.5):>7.2f} {percentile(latencies, 0.99):>7.2f} "
          f"{cpu / args.count * 1e6:>15.0f}")
    return rate, cpu / args.count


async def syncPart(reactor, args, root):
    print(f"\n== sync replication: {args.producers} producers, {args.size} B, {args.count} puts, "
          f"flush {args.flush}")
    print(f"{'broker':<28} {'msgs/s':>9} {'MB/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'broker CPU us/msg':>15}")
    plain = Broker(root, "plain", args.flush)
    try:
        alone, aloneCpu = await measure(reactor, args, plain.port, "no slave", [plain])
    finally:
        plain.stop()
    slave = Broker(root, "gregor", args.flush, plugin="gregor_slave.properties")
    master = Broker(root, "samsa", args.flush, plugin="samsa_master.properties",
                    properties=f"slave=127.0.0.1:{slave.port}\n")
    try:
        replicated, replicatedCpu = await measure(reactor, args, master.port, "samsa master + gregor slave",
                                                  [master, slave])
    finally:
        master.stop()
        slave.stop()
    print(f"sync replication keeps {100 * replicated / alone:.0f}% of the unreplicated throughput "
          f"(target: at least 50%); it costs {replicatedCpu / aloneCpu:.1f}x the broker CPU per message")


async def slaveLag(connection):
    reply = await connection.call(b"stats  1\r\n")
    for line in reply.body.decode().split("\r\n"):
        if line.startswith("replication_lag_bytes "):
            return int(line.split()[1])
    raise RuntimeError("the slave reports no replication_lag_bytes")


async def asyncPart(reactor, args, root):
    if not args.zookeeper:
        print("\n== async replication: skipped (needs --zookeeper or METAQ_TEST_ZK)")
        return
    zkRoot = "/metaq-bench-" + uuid.uuid4().hex[:8]
    print(f"\n== async replication: lag of a metaslave while the master takes {args.count} puts "
          f"({args.producers} producers, {args.size} B, flush {args.flush})")
    master = Broker(root, "master", args.flush, args.zookeeper, zkRoot)
    slave = Broker(root, "metaslave", args.flush, args.zookeeper, zkRoot, "async_slave.properties",
                   "slaveId=0\nslaveMaxDelayInMills=100\n")
    try:
        await warmUp(reactor, master.port)
        [watcher] = await connectAll(reactor, "127.0.0.1", slave.port, 1)
        samples = []
        sampling = [True]

        async def sample():
            while sampling[0]:
                samples.append(await slaveLag(watcher))
                await task.deferLater(reactor, 0.05, lambda: None)

        sampler = defer.ensureDeferred(sample())
        progress = Progress("put to the master", args.count)
        elapsed, _ = await produce(reactor, "127.0.0.1", master.port, "bench", args.producers,
                                   args.size, args.count, progress)
        progress.finish()
        loadEnd = time.perf_counter()
        sampling[0] = False
        await sampler
        while await slaveLag(watcher) > 0:
            await task.deferLater(reactor, 0.02, lambda: None)
        catchUp = time.perf_counter() - loadEnd
        watcher.transport.loseConnection()
        record = 20 + args.size
        samples.sort()
        print(f"master took {args.count / elapsed:.0f} msgs/s; slave lag during the load: "
              f"median {samples[len(samples) // 2] / record:.0f} msgs, max {samples[-1] / record:.0f} msgs "
              f"({samples[-1] / 1e6:.1f} MB); caught up {catchUp * 1000:.0f} ms after the last put")
    finally:
        slave.stop()
        master.stop()


async def main(reactor, args):
    root = tempfile.mkdtemp(prefix="metaq-habench-")
    try:
        await syncPart(reactor, args, root)
        await asyncPart(reactor, args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def parseArguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=50000, help="puts per measurement")
    parser.add_argument("--producers", type=int, default=10)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--flush", choices=["default", "group"], default="default",
                        help="default: unflushThreshold=1000; group: unflushThreshold=0")
    parser.add_argument("--zookeeper", default=os.environ.get("METAQ_TEST_ZK"))
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parseArguments(sys.argv[1:])
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, arguments)))
