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
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from broker import BrokerProcess, Exchange, Progress, freePort, percentile, produce  # noqa: E402

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class Broker:
    """
    One broker process in a directory of its own.
    """

    def __init__(self, root, name, flush, zookeeper=None, zkRoot="/meta", plugin=None, properties=""):
        self.directory = os.path.join(root, name)
        os.makedirs(self.directory)
        self.port = freePort()
        self.address = ("127.0.0.1", self.port)
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
        self.cpu = BrokerProcess(self.process.pid)
        for _ in range(300):
            try:
                socket.create_connection(self.address, timeout=0.2).close()
                return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError("broker did not start; see " + self.directory)
                time.sleep(0.1)
        raise RuntimeError("broker did not listen in time")

    def stop(self):
        self.process.terminate()
        self.process.wait(30)


def warmUp(broker, attempts=200):
    """
    Wait until a put succeeds (a sync master needs its slave link first).
    """
    exchange = Exchange(broker.address)
    try:
        for _ in range(attempts):
            kind, code, body = exchange.call(b"put bench 0 4 0 -1 1\r\nwarm")
            if code == 200:
                return
            time.sleep(0.1)
        raise RuntimeError(f"puts keep failing: {code} {body!r}")
    finally:
        exchange.close()


def measure(args, entry, label, brokers):
    """
    Put throughput and latency through C{entry}, and the CPU time
    C{brokers} (all processes involved) spent per message: on a busy machine
    the rate follows the CPU available, the CPU cost does not.
    """
    warmUp(entry)
    before = [broker.cpu.cpuSeconds() for broker in brokers]
    progress = Progress(label, args.count)
    elapsed, latencies = produce(entry.address, "bench", args.producers, args.size, args.count, progress)
    progress.finish()
    perMessage = [(broker.cpu.cpuSeconds() - cpu) / args.count * 1e6 for broker, cpu in zip(brokers, before)]
    rate = args.count / elapsed
    print(f"{label:<28} {rate:>9.0f} {rate * args.size / 1e6:>7.1f} "
          f"{percentile(latencies, 0.5):>7.2f} {percentile(latencies, 0.99):>7.2f} "
          f"{sum(perMessage):>17.0f}  ({' + '.join('%.0f' % cpu for cpu in perMessage)})")
    return rate, sum(perMessage)


def syncPart(args, root):
    print(f"\n== sync replication: {args.producers} producers, {args.size} B, {args.count} puts, "
          f"flush {args.flush}")
    print(f"{'broker':<28} {'msgs/s':>9} {'MB/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'broker CPU us/msg':>17}")
    plain = Broker(root, "plain", args.flush)
    try:
        alone, aloneCpu = measure(args, plain, "no slave", [plain])
    finally:
        plain.stop()
    slave = Broker(root, "gregor", args.flush, plugin="gregor_slave.properties")
    master = Broker(root, "samsa", args.flush, plugin="samsa_master.properties",
                    properties=f"slave=127.0.0.1:{slave.port}\n")
    try:
        replicated, replicatedCpu = measure(args, master, "samsa master + gregor slave", [master, slave])
    finally:
        master.stop()
        slave.stop()
    print(f"sync replication keeps {100 * replicated / alone:.0f}% of the unreplicated throughput "
          f"(target: at least 50%); master and slave spend {replicatedCpu / aloneCpu:.1f}x "
          f"the CPU per message of the broker alone")


def slaveLag(exchange):
    kind, code, body = exchange.call(b"stats  1\r\n")
    for line in body.decode().split("\r\n"):
        if line.startswith("replication_lag_bytes "):
            return int(line.split()[1])
    raise RuntimeError("the slave reports no replication_lag_bytes")


def asyncPart(args, root):
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
        warmUp(master)
        watcher = Exchange(slave.address)
        samples = []
        loading = threading.Event()
        loading.set()

        def sample():
            while loading.is_set():
                samples.append(slaveLag(watcher))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        progress = Progress("put to the master", args.count)
        try:
            elapsed, _ = produce(master.address, "bench", args.producers, args.size, args.count, progress)
        finally:
            loading.clear()
            sampler.join()
        progress.finish()
        loadEnd = time.perf_counter()
        while slaveLag(watcher) > 0:
            time.sleep(0.02)
        catchUp = time.perf_counter() - loadEnd
        watcher.close()
        record = 20 + args.size
        samples.sort()
        print(f"master took {args.count / elapsed:.0f} msgs/s; slave lag during the load: "
              f"median {samples[len(samples) // 2] / record:.0f} msgs, max {samples[-1] / record:.0f} msgs "
              f"({samples[-1] / 1e6:.1f} MB); caught up {catchUp * 1000:.0f} ms after the last put")
    finally:
        slave.stop()
        master.stop()


def main(args):
    root = tempfile.mkdtemp(prefix="metaq-habench-")
    try:
        syncPart(args, root)
        asyncPart(args, root)
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
    main(parseArguments(sys.argv[1:]))
