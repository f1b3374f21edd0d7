"""
Scale-out of produce throughput: 1, 2 and 3 brokers (issue 15).

For each broker count N it starts N brokers (C{twistd -n metaq}, ids 0..N-1,
each with topic C{bench-cluster} of C{--partitions} partitions) registered
in a fresh root of one ZooKeeper, then C{--workers} producer processes that
find the brokers through ZooKeeper (the Python client's discovery) and
send C{--count} messages each, round-robin over every partition of every
broker, with C{--in-flight} sends outstanding per process.  It prints the
aggregate acknowledged messages per second and the CPU time per message of
every process: each broker (its own messages), the brokers together and the
producers together (per message of the whole run).

On one machine the processes share its cores, so adding brokers mostly
shares the same CPU: the figure that says how a cluster of separate
machines grows is the broker CPU per message (a broker with a core of its
own stores about 1e6 / (us per message) messages per second, and N such
brokers N times that, as long as the producers and the network keep up).

    .venv/bin/python benchmarks/cluster.py                         # 1, 2, 3 brokers
    .venv/bin/python benchmarks/cluster.py --brokers 1,3 --count 20000 --size 1024
    .venv/bin/python benchmarks/cluster.py --group-commit          # unflushThreshold=0

ZooKeeper: C{$METAQ_TEST_ZK} when set, else one started for the run with
C{scripts/zookeeper.sh} (C{--ensemble}: three servers).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TOPIC = "bench-cluster"


def cpuSeconds(pid):
    """
    User + system CPU seconds of process C{pid} so far.
    """
    with open("/proc/%d/stat" % (pid,)) as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def startZooKeeper(directory, servers):
    return subprocess.check_output(
        ["bash", os.path.join(ROOT, "scripts", "zookeeper.sh"), "start", directory, str(servers)],
        text=True).strip()


def stopZooKeeper(directory):
    subprocess.call(["bash", os.path.join(ROOT, "scripts", "zookeeper.sh"), "stop", directory])


def startBroker(directory, brokerId, zkConnect, root, partitions, unflushThreshold):
    """
    Run one broker registered in ZooKeeper.

    @return: C{(process, port)} once it listens.
    """
    os.makedirs(directory)
    ini = os.path.join(directory, "server.ini")
    with open(ini, "w") as f:
        f.write("[system]\nbrokerId=%d\nhostName=127.0.0.1\nnumPartitions=%d\n"
                "unflushThreshold=%d\nunflushInterval=1000\ndataPath=%s\n"
                "[zookeeper]\nzk.zkEnable=true\nzk.zkConnect=%s\nzk.zkRoot=%s\n"
                "zk.zkSessionTimeoutMs=10000\nzk.zkSyncTimeMs=0\n[topic=%s]\n"
                % (brokerId, partitions, unflushThreshold, os.path.join(directory, "data"),
                   zkConnect, root, TOPIC))
    log = os.path.join(directory, "broker.log")
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    process = subprocess.Popen(
        [twistd, "--nodaemon", "--pidfile=", "--logfile", log, "metaq", "--config", ini,
         "--port", "tcp:0:interface=127.0.0.1"], cwd=directory)
    for _ in range(600):
        if os.path.exists(log):
            with open(log, errors="replace") as f:
                text = f.read()
            if "Registered meta://" in text:
                return process, int(text.split("Registered meta://127.0.0.1:", 1)[1].split()[0])
        if process.poll() is not None:
            raise RuntimeError("broker %d did not start; see %s" % (brokerId, log))
        time.sleep(0.1)
    raise RuntimeError("broker %d did not register in time; see %s" % (brokerId, log))


def runWorkers(args, zkConnect, root, brokers):
    """
    Start the producer processes, wait until all are done.

    @return: C{(elapsed, acknowledged, producer CPU seconds, per-broker acks)}.
    """
    command = [sys.executable, os.path.abspath(__file__), "--worker", zkConnect, root,
               str(args.count), str(args.size), str(args.in_flight), str(len(brokers) * args.partitions)]
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
               for _ in range(args.workers)]
    results = []
    for worker in workers:
        out, _ = worker.communicate()
        if worker.returncode != 0:
            raise RuntimeError("a producer process failed")
        results.append(json.loads(out.strip().splitlines()[-1]))
    start = min(r["start"] for r in results)
    end = max(r["end"] for r in results)
    perBroker = {}
    for result in results:
        for broker, count in result["perBroker"].items():
            perBroker[broker] = perBroker.get(broker, 0) + count
    return (end - start, sum(r["acked"] for r in results), sum(r["cpu"] for r in results),
            perBroker)


def runCount(args, zkConnect, count, directory):
    root = "/metaq-bench-cluster-%s" % (uuid.uuid4().hex[:8],)
    processes = []
    try:
        for brokerId in range(count):
            processes.append(startBroker(
                os.path.join(directory, "n%d-broker%d" % (count, brokerId)), brokerId, zkConnect,
                root, args.partitions, 0 if args.group_commit else 1000))
        before = [cpuSeconds(p.pid) for p, _ in processes]
        elapsed, acked, producerCpu, perBroker = runWorkers(args, zkConnect, root, processes)
        brokerCpu = [cpuSeconds(p.pid) - b for (p, _), b in zip(processes, before)]
    finally:
        for process, _ in processes:
            process.terminate()
        for process, _ in processes:
            process.wait(30)
    perBrokerUs = " ".join(
        "%d:%.0f" % (i, cpu / max(perBroker.get(str(i), 0), 1) * 1e6)
        for i, cpu in enumerate(brokerCpu))
    brokerUs = sum(brokerCpu) / acked * 1e6
    print("%7d %9d %9.0f %8.2f %16.0f %-24s %13.0f %14.0f" % (
        count, acked, acked / elapsed, acked * args.size / elapsed / 1e6, brokerUs, perBrokerUs,
        producerCpu / acked * 1e6, count * 1e6 / brokerUs))
    sys.stdout.flush()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--brokers", default="1,2,3", help="broker counts to run (default 1,2,3)")
    parser.add_argument("--partitions", type=int, default=2, help="partitions per broker (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="producer processes (default 2)")
    parser.add_argument("--count", type=int, default=30000,
                        help="messages per producer process (default 30000)")
    parser.add_argument("--size", type=int, default=512, help="message size in bytes (default 512)")
    parser.add_argument("--in-flight", type=int, default=32,
                        help="sends outstanding per producer process (default 32)")
    parser.add_argument("--group-commit", action="store_true",
                        help="unflushThreshold=0: every reply after fsync (default 1000)")
    parser.add_argument("--ensemble", action="store_true",
                        help="start a three-server ZooKeeper ensemble (without $METAQ_TEST_ZK)")
    parser.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(*args.worker)
    directory = tempfile.mkdtemp(prefix="metaq-bench-cluster-")
    zkDirectory = os.path.join(directory, "zk")
    zkConnect = os.environ.get("METAQ_TEST_ZK")
    try:
        if not zkConnect:
            zkConnect = startZooKeeper(zkDirectory, 3 if args.ensemble else 1)
        print("ZooKeeper %s; %d producer processes x %d messages of %d bytes, %d in flight each; "
              "%d partitions per broker; %s" % (
                  zkConnect, args.workers, args.count, args.size, args.in_flight, args.partitions,
                  "group commit (unflushThreshold=0)" if args.group_commit else "unflushThreshold=1000"))
        print("%7s %9s %9s %8s %16s %-24s %13s %14s" % (
            "brokers", "msgs", "msgs/s", "MB/s", "broker us/msg", "per broker us/msg",
            "client us/msg", "projected/s"))
        for count in [int(n) for n in args.brokers.split(",")]:
            runCount(args, zkConnect, count, directory)
        print("broker us/msg: CPU of all brokers per acknowledged message; per broker: each "
              "broker's CPU per message it stored; client: CPU of all producer processes per "
              "message; projected/s: N brokers on machines of their own, 1e6 / broker us/msg each")
    finally:
        stopZooKeeper(zkDirectory)
        shutil.rmtree(directory, ignore_errors=True)


def worker(zkConnect, root, count, size, inFlight, partitions):
    """
    One producer process: discover the brokers, send, print one JSON line.
    """
    sys.path.insert(0, ROOT)
    from twisted.internet import defer, task

    from metamorphosis.client.message import Message
    from metamorphosis.client.session import MetaClientConfig, MetaMessageSessionFactory

    count, size, inFlight, partitions = int(count), int(size), int(inFlight), int(partitions)

    async def run(reactor):
        factory = MetaMessageSessionFactory(
            MetaClientConfig(zkConnect=zkConnect, zkRoot=root, zkSessionTimeoutMs=10000), reactor)
        await factory.start()
        producer = factory.createProducer()
        await producer.publish(TOPIC)
        for _ in range(600):
            if len(factory.discovery.partitionsFor(TOPIC) or ()) == partitions:
                break
            await task.deferLater(reactor, 0.1, lambda: None)
        payload = os.urandom(size)
        perBroker = {}
        remaining = [count]

        async def sender():
            while remaining[0] > 0:
                remaining[0] -= 1
                while True:
                    result = await producer.sendMessage(Message(TOPIC, payload), timeout=10.0)
                    if result.success:
                        key = str(result.partition.brokerId)
                        perBroker[key] = perBroker.get(key, 0) + 1
                        break

        cpu = time.process_time()
        start = time.time()
        await defer.gatherResults([defer.ensureDeferred(sender()) for _ in range(inFlight)])
        end = time.time()
        cpu = time.process_time() - cpu
        await factory.close()
        print(json.dumps({"start": start, "end": end, "acked": count, "cpu": cpu,
                          "perBroker": perBroker}))

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))


if __name__ == "__main__":
    main()
