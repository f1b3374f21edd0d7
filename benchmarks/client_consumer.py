"""
Throughput of one Python consumer against our broker (issue 5,
Performance): msgs/s and MB/s reading COUNT messages of SIZE bytes.

The broker (C{twistd -n metaq} on a free loopback port, no ZooKeeper,
unless C{--broker} names a running one) is first filled with pipelined
puts spread over C{--partitions} partitions of a fresh topic; then one
L{MessageConsumer} in direct mode (C{serverUrl}, one fetch loop per
partition, Java's default 1 MiB C{maxSize}) reads them all with a listener
that only counts, and the time from C{completeSubscribe} to the last
message is reported.

    .venv/bin/python benchmarks/client_consumer.py
    .venv/bin/python benchmarks/client_consumer.py --count 100000 --size 1024 --partitions 4
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from twisted.internet import defer, task

from metamorphosis.client.connection import BrokerConnection, ConnectionPool
from metamorphosis.client.consumer import ConsumerConfig, MessageConsumer
from metamorphosis.client.fetch import MessageIdCache
from metamorphosis.client.offsets import LocalOffsetStorage
from metamorphosis.client.recovery import DropPolicy
from metamorphosis.protocol import records


def freePort():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def startBroker(directory, partitions):
    """
    Run C{twistd -n metaq} on a free port.

    @return: C{(process, url)}
    """
    port = freePort()
    ini = os.path.join(directory, "server.ini")
    with open(ini, "w") as f:
        f.write(
            "[system]\nbrokerId=0\nnumPartitions=%d\nserverPort=%d\n"
            "unflushThreshold=1000\nunflushInterval=500\ndataPath=%s\n"
            "[zookeeper]\nzk.zkEnable=false\n[topic=bench-*]\n"
            % (partitions, port, os.path.join(directory, "data"))
        )
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    process = subprocess.Popen(
        [twistd, "--nodaemon", "--pidfile=", "--logfile", os.path.join(directory, "broker.log"),
         "metaq", "--config", ini, "--port", "tcp:%d:interface=127.0.0.1" % port],
        cwd=directory,
    )
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, "meta://127.0.0.1:%d" % port
        except OSError:
            if process.poll() is not None:
                raise RuntimeError("the broker did not start; see " + directory)
            time.sleep(0.1)
    raise RuntimeError("the broker did not listen in time")


async def fill(reactor, url, topic, partitions, payload, count, inFlight=1000):
    """
    Put C{count} messages, round-robin over the partitions, with
    C{inFlight} puts outstanding.
    """
    connection = BrokerConnection(url, reactor)
    protocol = await connection.whenConnected(10)
    checksum = records.checksum(payload)
    done = defer.Deferred()
    state = {"sent": 0, "answered": 0}

    def answered(reply):
        if reply.code != 200:
            done.errback(RuntimeError("put failed: %s" % (reply.body,)))
            return
        state["answered"] += 1
        if state["answered"] == count:
            done.callback(None)
        elif state["sent"] < count:
            sendOne()

    def sendOne():
        partition = state["sent"] % partitions
        state["sent"] += 1
        protocol.put(topic, partition, payload, 0, checksum, timeout=60).addCallback(answered)

    for _ in range(min(inFlight, count)):
        sendOne()
    await done
    await connection.stop()


class Counter:
    def __init__(self, count):
        self.count = count
        self.received = 0
        self.bytes = 0
        self.done = defer.Deferred()

    def receiveMessages(self, message):
        self.received += 1
        self.bytes += len(message.data)
        if self.received == self.count:
            self.done.callback(time.perf_counter())


async def consume(reactor, url, topic, partitions, count, maxSize, directory):
    counter = Counter(count)
    pool = ConnectionPool(reactor)
    consumers = []
    start = time.perf_counter()
    for partition in range(partitions):
        config = ConsumerConfig("benchgroup", serverUrl=url, partition="0-%d" % partition)
        consumer = MessageConsumer(
            config, pool, offsetStorage=LocalOffsetStorage(
                os.path.join(directory, "offsets-%d" % partition)),
            recoverManager=DropPolicy(), reactor=reactor, idCache=MessageIdCache())
        consumer.subscribe(topic, maxSize, counter)
        await consumer.completeSubscribe()
        consumers.append(consumer)
    end = await counter.done
    for consumer in consumers:
        await consumer.shutdown()
    await pool.close()
    return end - start, counter


async def consumerBenchmark(reactor, args):
    directory = tempfile.mkdtemp(prefix="metaq-consumer-bench-")
    process = None
    url = args.broker
    try:
        if url is None:
            process, url = startBroker(directory, args.partitions)
        topic = "bench-consumer-%d" % int(time.time())
        payload = os.urandom(args.size)
        print("broker %s, %d messages of %d bytes in %d partition(s), maxSize %d"
              % (url, args.count, args.size, args.partitions, args.max_size))
        began = time.perf_counter()
        await fill(reactor, url, topic, args.partitions, payload, args.count)
        print("filled in %.1f s; waiting for the flush" % (time.perf_counter() - began))
        await task.deferLater(reactor, 1.5, lambda: None)
        elapsed, counter = await consume(reactor, url, topic, args.partitions, args.count,
                                         args.max_size, directory)
        rate = counter.received / elapsed
        print("%-18s %8s %6s %10s %8s" % ("mode", "msgs", "size", "msgs/s", "MB/s"))
        print("%-18s %8d %6d %10.0f %8.1f" % ("consumer", counter.received, args.size, rate,
                                              counter.bytes / elapsed / 1e6))
    finally:
        if process is not None:
            process.terminate()
            process.wait(30)
        shutil.rmtree(directory, ignore_errors=True)


def parseArguments(argv):
    parser = argparse.ArgumentParser(description="One Python consumer against our broker.")
    parser.add_argument("--count", type=int, default=100000, help="messages to read")
    parser.add_argument("--size", type=int, default=1024, help="payload bytes")
    parser.add_argument("--partitions", type=int, default=1, help="partitions of the topic")
    parser.add_argument("--max-size", type=int, default=1024 * 1024, help="fetch maxSize")
    parser.add_argument("--broker", default=None, help="meta://host:port of a running broker "
                        "whose bench-* topics have --partitions partitions")
    return parser.parse_args(argv)


def main(argv=None):
    args = parseArguments(argv if argv is not None else sys.argv[1:])
    task.react(lambda reactor: defer.ensureDeferred(consumerBenchmark(reactor, args)))


if __name__ == "__main__":
    main()
