"""
The cost of replication (issue 7, Performance).

1. Sync replication: put throughput and latency of a samsa master with its
   gregor slave, against the same broker without a slave, S-byte messages,
   in two shapes: P producer connections with one put in flight each
   (C{--producers}), and ONE connection with N puts in flight
   (C{--shared N}, the Java client's shape: its threads share one
   connection per broker).
2. Async replication: the lag of a metaslave (its C{replication_lag_bytes}
   stat, sampled every 50 ms) while the master takes the same load, and how
   long it needs to catch up afterwards.
3. With C{--failover ROUNDS}, only this: fast failover of a sync pair (issue
   16).  A samsa master and its gregor slave (C{autoPromote=true}, default
   C{masterGraceMs}) at the default C{zk.zkSessionTimeoutMs} (30 s); the
   Python producer (blocking API, through ZooKeeper) puts unique bodies from
   P threads, retrying each failed send with the same body; the master is
   killed with SIGKILL, or with C{--failover-signal stop} frozen with
   SIGSTOP (a host that dies without closing its connections: they stay
   open, its session stays until it expires); printed per round: kill (or
   freeze) to the first acknowledged put of a send started after the
   master was gone (so on the promoted slave), acknowledged messages
   missing from the slave's log (lost) and bodies stored twice
   (duplicates, from retried sends); a frozen master is then resumed
   (SIGCONT) and must refuse a put.

With C{--opcodes} (sync part only) each broker's reactor thread counts the
Python bytecodes every function runs during the timed puts, as
C{benchmarks/loneput.py --opcodes} does for one broker, and the report
gives them per put for the broker alone, the master and the slave apart:
where a replicated put's work goes, broker by broker, whatever the
machine's load.

Every broker is a fresh C{twistd -n metaq} on a free loopback port. The
async part needs a ZooKeeper: C{--zookeeper HOST:PORT}, or C{METAQ_TEST_ZK}
(C{export METAQ_TEST_ZK=$(bash scripts/zookeeper.sh start /tmp/zk-bench)}).

    .venv/bin/python benchmarks/ha.py
    .venv/bin/python benchmarks/ha.py --count 50000 --producers 10 --size 1024 --flush group
    .venv/bin/python benchmarks/ha.py --count 10000 --producers 10 --shared 10 --flush group
    .venv/bin/python benchmarks/ha.py --count 1000 --producers 0 --shared 10 --flush group --callgrind
    .venv/bin/python benchmarks/ha.py --count 1000 --producers 0 --shared 10 --flush group --callgrind --registered
    .venv/bin/python benchmarks/ha.py --count 2000 --producers 0 --shared 10 --flush group --opcodes --registered
    .venv/bin/python benchmarks/ha.py --count 30000 --producers 0 --shared 10 --flush group --slave-idle-poll 0
    .venv/bin/python benchmarks/ha.py --count 20000 --producers 0 --shared 10 --flush group --spread --slave-unflush-threshold 1000 --slave-unflush-interval 1000
    .venv/bin/python benchmarks/ha.py --count 20000 --producers 0 --shared 10 --flush group --spread --slave-stub fsync
    .venv/bin/python benchmarks/ha.py --failover 5
    .venv/bin/python benchmarks/ha.py --failover 5 --failover-signal stop
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from broker import BrokerProcess, Exchange, Progress, awaitListening, freePort, percentile, produce  # noqa: E402
from kazoo.client import KazooClient  # noqa: E402
from loneput import countingOpcodes, opcodeReport  # noqa: E402

from metamorphosis.client.blocking import BlockingMessageSessionFactory  # noqa: E402
from metamorphosis.client.errors import MetaClientError  # noqa: E402
from metamorphosis.client.message import Message  # noqa: E402
from metamorphosis.client.session import MetaClientConfig  # noqa: E402
from metamorphosis.protocol.records import decodeRecords  # noqa: E402

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class Broker:
    """
    One broker process in a directory of its own.
    """

    #: A command line prefix for the broker process (see --callgrind).
    wrapper = []

    def __init__(self, root, name, flush, zookeeper=None, zkRoot="/meta", plugin=None, properties="",
                 fsyncMethod="auto", idlePoll=None, unflushThreshold=None, unflushInterval=10000):
        """
        @param flush: C{group} (C{unflushThreshold=0}) or C{default}
            (1000), unless C{unflushThreshold} is given.
        """
        if unflushThreshold is None:
            unflushThreshold = 0 if flush == "group" else 1000
        self.directory = os.path.join(root, name)
        os.makedirs(self.directory)
        self.port = freePort()
        self.address = ("127.0.0.1", self.port)
        ini = os.path.join(self.directory, "server.ini")
        with open(ini, "w") as f:
            f.write(
                f"[system]\nbrokerId=5\nhostName=127.0.0.1\nnumPartitions=1\nserverPort={self.port}\n"
                f"unflushThreshold={unflushThreshold}\nunflushInterval={unflushInterval}\n"
                f"dataPath=data\nmaxTransferSize=1048576\nfsyncMethod={fsyncMethod}\n"
                + ("" if idlePoll is None else f"idlePollMicros={idlePoll}\n") +
                f"[zookeeper]\nzk.zkEnable={'true' if zookeeper else 'false'}\n"
                f"zk.zkConnect={zookeeper or ''}\nzk.zkRoot={zkRoot}\nzk.zkSyncTimeMs=0\n"
                "[topic=bench]\n"
            )
        if plugin is not None:
            with open(os.path.join(self.directory, plugin), "w") as f:
                f.write(properties)
        self.process = subprocess.Popen(
            self.wrapper + [TWISTD, "--nodaemon", "--pidfile=", "--logfile", "broker.log", "metaq", "--config", ini,
             "--port", f"tcp:{self.port}:interface=127.0.0.1"],
            cwd=self.directory,
        )
        self.cpu = BrokerProcess(self.process.pid)
        awaitListening(self.process, [self.address], "the broker in " + self.directory,
                       3000 if self.wrapper else 300)

    def stop(self):
        self.process.terminate()
        self.process.wait(30)

    def kill(self):
        self.process.kill()
        self.process.wait(30)

    def freeze(self):
        """
        SIGSTOP: the process stops with its connections and its ZooKeeper
        session open, as a host that dies without closing them.
        """
        self.process.send_signal(signal.SIGSTOP)

    def resume(self):
        self.process.send_signal(signal.SIGCONT)

    def storedBodies(self, topic="bench", partition=0):
        directory = os.path.join(self.directory, "data", f"{topic}-{partition}")
        data = b""
        for name in sorted(os.listdir(directory)):
            if name.endswith(".meta"):
                with open(os.path.join(directory, name), "rb") as f:
                    data += f.read()
        # A running broker keeps zeros after its last record
        # (preallocateSize), which would decode as empty records; the
        # bodies put here never end in a NUL byte.
        return [record.data for record in decodeRecords(data.rstrip(b"\0"))[0]]


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


def measure(args, entry, label, brokers, producers, inflight):
    """
    Put throughput and latency through C{entry}, and the CPU time
    C{brokers} (all processes involved) spent per message: on a busy machine
    the rate follows the CPU available, the CPU cost does not.
    """
    warmUp(entry, 3000 if args.callgrind else 200)
    if args.callgrind:
        # Warm the caches and the code paths, then count from zero.
        produce(entry.address, "bench", producers, args.size, 200, Progress("warm-up", 200), inflight)
        for broker in brokers:
            subprocess.run(["callgrind_control", "--zero", str(broker.process.pid)], check=True, capture_output=True)
    if args.opcodes:
        produce(entry.address, "bench", producers, args.size, 500, Progress("warm-up", 500), inflight)
        for broker in brokers:
            broker.process.send_signal(signal.SIGUSR2)
        time.sleep(0.2)
    before = [broker.cpu.cpuSeconds() for broker in brokers]
    progress = Progress(label, args.count)
    elapsed, latencies = produce(entry.address, "bench", producers, args.size, args.count, progress, inflight,
                                 spread=args.spread)
    progress.finish()
    if args.opcodes:
        for broker in brokers:
            broker.process.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
        for broker in brokers:
            print(f"{label}, {os.path.basename(broker.directory)}:")
            opcodeReport(args.opcodesFile.replace("{pid}", str(broker.process.pid)), args.count, args.top)
    perMessage = [(broker.cpu.cpuSeconds() - cpu) / args.count * 1e6 for broker, cpu in zip(brokers, before)]
    if args.callgrind:
        instructions = [callgrindCount(broker) / args.count for broker in brokers]
        print(f"{label:<40} instructions per put: {sum(instructions):,.0f}  "
              f"({' + '.join(f'{count:,.0f}' for count in instructions)})", flush=True)
        return sum(instructions), sum(instructions)
    rate = args.count / elapsed
    print(f"{label:<40} {rate:>9.0f} {rate * args.size / 1e6:>7.1f} "
          f"{percentile(latencies, 0.5):>7.2f} {percentile(latencies, 0.99):>7.2f} "
          f"{sum(perMessage):>17.0f}  ({' + '.join('%.0f' % cpu for cpu in perMessage)})", flush=True)
    return rate, sum(perMessage)


def callgrindCount(broker):
    """
    The instructions C{broker} (run under callgrind) executed since its
    counters were zeroed: a figure that does not depend on the machine's
    load.
    """
    subprocess.run(["callgrind_control", "--dump", str(broker.process.pid)], check=True, capture_output=True)
    dumps = [os.path.join(broker.directory, name) for name in os.listdir(broker.directory)
             if name.startswith(f"callgrind.out.{broker.process.pid}")]
    with open(max(dumps, key=os.path.getmtime)) as f:
        for line in f:
            if line.startswith(("totals:", "summary:")):
                return int(line.split()[1])
    raise RuntimeError("no totals in the callgrind dump of " + broker.directory)


def shapes(args):
    """
    The load shapes measured: C{(label, connections, puts in flight each)}.
    """
    result = [(f"1 conn x{n}", 1, n) for n in args.shared]
    if args.producers:
        result.append((f"{args.producers} conns", args.producers, 1))
    return result


class StubSlave:
    """
    C{benchmarks/stubslave.py} in place of the gregor slave (C{--slave-stub}).
    """

    def __init__(self, root, mode):
        self.directory = os.path.join(root, f"stub-{mode}")
        os.makedirs(self.directory)
        self.port = freePort()
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "stubslave.py"),
             str(self.port), mode],
            cwd=self.directory,
        )
        self.cpu = BrokerProcess(self.process.pid)
        awaitListening(self.process, [("127.0.0.1", self.port)], "the stub slave in " + self.directory, 100)

    def stop(self):
        self.process.terminate()
        self.process.wait(30)


def syncPart(args, root):
    print(f"\n== sync replication: {args.size} B, {args.count} puts, flush {args.flush}")
    print(f"{'broker, shape':<40} {'msgs/s':>9} {'MB/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'broker CPU us/msg':>17}")
    alone = {}
    # Registered in ZooKeeper, a master passes the fence (docs/ha.md).
    zookeeper = args.zookeeper if args.registered else None
    zkRoot = "/metaq-bench-" + uuid.uuid4().hex[:8]
    plain = Broker(root, "plain", args.flush, zookeeper, zkRoot)
    try:
        for label, producers, inflight in shapes(args):
            alone[label] = measure(args, plain, f"no slave, {label}", [plain], producers, inflight)
    finally:
        plain.stop()
    replicated = {}
    slaveName = "gregor"
    if args.slave_stub:
        slave = StubSlave(root, args.slave_stub)
        slaveName = f"stub ({args.slave_stub})"
    else:
        slave = Broker(root, "gregor", args.flush, plugin="gregor_slave.properties", fsyncMethod=args.slave_fsync,
                       idlePoll=args.slave_idle_poll, unflushThreshold=args.slave_unflush_threshold,
                       unflushInterval=args.slave_unflush_interval)
    master = Broker(root, "samsa", args.flush, zookeeper, zkRoot, plugin="samsa_master.properties",
                    properties=f"slave=127.0.0.1:{slave.port}\n", idlePoll=args.master_idle_poll)
    try:
        for label, producers, inflight in shapes(args):
            replicated[label] = measure(args, master, f"samsa + {slaveName}, {label}", [master, slave],
                                        producers, inflight)
    finally:
        master.stop()
        slave.stop()
    for label, _, _ in shapes(args):
        (rate, cpu), (aloneRate, aloneCpu) = replicated[label], alone[label]
        if args.callgrind:
            print(f"{label}: master and slave execute {cpu / aloneCpu:.2f}x the instructions per put "
                  f"of the broker alone")
            continue
        if args.opcodes:
            print(f"{label}: the rates and CPU times above were taken under tracing; only the bytecode "
                  f"counts tell anything")
            continue
        print(f"{label}: sync replication keeps {100 * rate / aloneRate:.0f}% of the unreplicated "
              f"throughput (target: at least 70%); master and slave spend {cpu / aloneCpu:.1f}x "
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
    # The load of the sync part's first row (with --producers 0 there are
    # no P connections to load the master with).
    if not shapes(args):
        print("\n== async replication: skipped (no load: --producers 0 and no --shared)")
        return
    [(label, producers, inflight), *_] = shapes(args)
    print(f"\n== async replication: lag of a metaslave while the master takes {args.count} puts "
          f"({label}, {args.size} B, flush {args.flush})")
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
            elapsed, _ = produce(master.address, "bench", producers, args.size, args.count,
                                 progress, inflight)
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


class FailoverLoad:
    """
    Producer threads putting unique bodies, each failed send retried with
    the same body until acknowledged.
    """

    def __init__(self, producer, threads):
        self.producer = producer
        self.acknowledged = set()
        self.failures = 0
        self.since = None
        self.firstAfter = None
        self.running = True
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(n,)) for n in range(threads)]
        for thread in self.threads:
            thread.start()

    def run(self, n):
        sequence = 0
        while self.running:
            body = b"fo-%d-%d" % (n, sequence)
            while self.running:
                started = time.monotonic()
                try:
                    success = self.producer.send(Message("bench", body), timeout=2.0).success
                except MetaClientError:
                    success = False
                if success:
                    with self.lock:
                        self.acknowledged.add(body)
                        if self.since is not None and started > self.since and self.firstAfter is None:
                            self.firstAfter = time.monotonic()
                    break
                with self.lock:
                    self.failures += 1
                time.sleep(0.02)
            sequence += 1

    def waitFor(self, predicate, timeout=120):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise RuntimeError("the failover did not happen in time")
            time.sleep(0.01)

    def stop(self):
        self.running = False
        for thread in self.threads:
            thread.join()


def beating(zookeeper, zkRoot, master):
    """
    Wait until the master has beaten a few times in ZooKeeper: the round
    measures a running pair, not one that is still being set up (a master
    killed before its first beat is replaced by the slow path).
    """
    client = KazooClient(hosts=zookeeper)
    client.start(10)
    try:
        path = f"{zkRoot}/failover-brokers/5/127.0.0.1:{master.port}"
        deadline = time.monotonic() + 60
        while True:
            stat = client.exists(path)
            if stat is not None and stat.version >= 3:
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the master does not beat in ZooKeeper")
            time.sleep(0.05)
    finally:
        client.stop()
        client.close()


def failoverRound(args, root, number):
    zkRoot = "/metaq-bench-failover-" + uuid.uuid4().hex[:8]
    slave = Broker(root, f"gregor{number}", "group", args.zookeeper, zkRoot, "gregor_slave.properties",
                   "autoPromote=true\n")
    master = Broker(root, f"samsa{number}", "group", args.zookeeper, zkRoot, "samsa_master.properties",
                    f"slave=127.0.0.1:{slave.port}\n")
    factory = None
    try:
        warmUp(master)
        beating(args.zookeeper, zkRoot, master)
        factory = BlockingMessageSessionFactory(MetaClientConfig(
            zkConnect=args.zookeeper, zkRoot=zkRoot, reconnectIntervalInMills=100,
            localMessagePath=os.path.join(root, f"local{number}"),
            asyncStoragePath=os.path.join(root, f"async{number}")))
        producer = factory.createProducer()
        producer.publish("bench")
        load = FailoverLoad(producer, args.producers)
        try:
            load.waitFor(lambda: len(load.acknowledged) >= 500)
            killed = time.monotonic()
            if args.failover_signal == "stop":
                master.freeze()
            else:
                master.kill()
            load.since = time.monotonic()
            load.waitFor(lambda: load.firstAfter is not None)
            promoted = len(load.acknowledged)
            load.waitFor(lambda: len(load.acknowledged) >= promoted + 200)
        finally:
            load.stop()
        stored = slave.storedBodies()
        lost = len(load.acknowledged - set(stored))
        duplicates = len(stored) - len(set(stored))
        recovered = load.firstAfter - killed
        resumed = resumedPut(master) if args.failover_signal == "stop" else ""
        print(f"{number:>5} {recovered:>22.2f} {len(load.acknowledged):>12} {lost:>5} {duplicates:>10} "
              f"{load.failures:>14}{resumed}")
        return recovered, lost, duplicates
    finally:
        if factory is not None:
            factory.close()
        slave.stop()
        if master.process.poll() is None:
            master.resume()
            master.stop()


def resumedPut(master):
    """
    Resume a frozen master and put to it: the put must be refused (its
    syncs are refused by the promoted slave, and it fences itself).

    @return: the column of the table: the reply's code.
    """
    master.resume()
    exchange = Exchange(master.address)
    try:
        kind, code, body = exchange.call(b"put bench 0 7 0 -1 1\r\nresumed")
    finally:
        exchange.close()
    if code == 200:
        raise RuntimeError(f"the resumed master acknowledged a put: {body!r}")
    return f" {code:>12}"


def failoverPart(args, root):
    if not args.zookeeper:
        raise SystemExit("--failover needs --zookeeper or METAQ_TEST_ZK")
    stop = args.failover_signal == "stop"
    event = "silent" if stop else "kill"
    print(f"== fast failover of a sync pair: {'SIGSTOP' if stop else 'kill -9'} of the master under load from "
          f"{args.producers} Python producer threads, zkSessionTimeoutMs=30000 (default), masterGraceMs=1200 "
          f"(default)" + (", linkHeartbeatMs=300, masterSilenceMs=1000 (defaults)" if stop else ""))
    print(f"{'round':>5} {event + ' -> first ack (s)':>22} {'acknowledged':>12} {'lost':>5} {'duplicates':>10} "
          f"{'failed sends':>14}" + (f" {'resumed put':>12}" if stop else ""))
    results = [failoverRound(args, root, number) for number in range(1, args.failover + 1)]
    times = sorted(result[0] for result in results)
    print(f"{event} -> first acknowledged put on the promoted slave: median {times[len(times) // 2]:.2f} s, "
          f"max {times[-1]:.2f} s (goal: at most 3 s); lost {sum(r[1] for r in results)}, "
          f"duplicates {sum(r[2] for r in results)}")


def main(args):
    root = tempfile.mkdtemp(prefix="metaq-habench-")
    try:
        if args.failover:
            failoverPart(args, root)
            return
        if args.callgrind:
            Broker.wrapper = ["valgrind", "--tool=callgrind", "--dump-instr=no"]
            syncPart(args, root)
            return
        if args.opcodes:
            # The brokers started from here load the counter (their
            # environment is this process's).
            args.opcodesFile = os.path.join(root, "opcodes-{pid}.json")
            with countingOpcodes(root, args.opcodesFile):
                syncPart(args, root)
            return
        syncPart(args, root)
        asyncPart(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def parseArguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=50000, help="puts per measurement")
    parser.add_argument("--producers", type=int, default=10,
                        help="connections with one put in flight each (0: no such row)")
    parser.add_argument("--shared", type=lambda text: [int(n) for n in text.split(",") if n], default=[],
                        metavar="N[,N...]", help="also ONE connection with N puts in flight (the Java client's shape)")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--flush", choices=["default", "group"], default="default",
                        help="default: unflushThreshold=1000; group: unflushThreshold=0")
    parser.add_argument("--callgrind", action="store_true",
                        help="run the brokers under valgrind --tool=callgrind and print instructions per put "
                             "(sync part only; use a small --count)")
    parser.add_argument("--spread", action="store_true",
                        help="sync part: the puts a read of replies frees leave one write each, not in one "
                             "(the Java client's threads, each sending when it wakes to its reply)")
    parser.add_argument("--opcodes", action="store_true",
                        help="count the Python bytecodes each broker's reactor thread runs per put "
                             "(sync part only; the tracing slows the brokers down)")
    parser.add_argument("--top", type=int, default=25, help="rows of each --opcodes report")
    parser.add_argument("--zookeeper", default=os.environ.get("METAQ_TEST_ZK"))
    parser.add_argument("--registered", action="store_true",
                        help="sync part: the broker alone and the master register in ZooKeeper (--zookeeper), "
                             "as in production, where their puts pass the fence")
    parser.add_argument("--slave-fsync", choices=["auto", "kernel", "thread"], default="auto",
                        help="sync part: the slave's fsyncMethod (the master and the broker alone keep auto)")
    parser.add_argument("--slave-idle-poll", type=int, default=None, metavar="MICROS",
                        help="sync part: the slave's idlePollMicros (default: the broker's default, "
                             "docs/performance.md)")
    parser.add_argument("--master-idle-poll", type=int, default=None, metavar="MICROS",
                        help="sync part: the master's idlePollMicros (default: the broker's default for a sync "
                             "master, which also polls after each write of syncs to its slave; docs/ha.md)")
    parser.add_argument("--slave-unflush-threshold", type=int, default=None, metavar="N",
                        help="sync part: the slave's unflushThreshold (default: the master's, --flush); with N > 0 "
                             "the slave answers a sync once it is written, and fsyncs after N messages or "
                             "--slave-unflush-interval (docs/ha.md, \"The slave's flush policy\")")
    parser.add_argument("--slave-unflush-interval", type=int, default=10000, metavar="MS",
                        help="sync part: the slave's unflushInterval (default: the master's, 10000)")
    parser.add_argument("--slave-stub", choices=["none", "fsync"], default=None,
                        help="sync part: instead of a gregor slave, benchmarks/stubslave.py, which answers every "
                             "sync and does nothing else (none), or writes and fdatasyncs each read inline first "
                             "(fsync): near the bound for any slave, durable or not")
    parser.add_argument("--failover", type=int, default=0, metavar="ROUNDS",
                        help="measure only fast failover of a sync pair, this many rounds")
    parser.add_argument("--failover-signal", choices=["kill", "stop"], default="kill",
                        help="--failover: stop the master with SIGKILL (a crash), or freeze it with SIGSTOP "
                             "(a host that dies without closing its connections), resuming it after the round")
    args = parser.parse_args(argv)
    if args.slave_stub and (args.opcodes or args.callgrind):
        parser.error("--slave-stub measures rates only: not with --opcodes or --callgrind")
    return args


if __name__ == "__main__":
    main(parseArguments(sys.argv[1:]))
