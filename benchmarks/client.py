"""
Throughput of the Python client against our broker (issue 5, Performance).

Producer part: one producer sends COUNT messages of SIZE bytes to topic
C{bench-client-*} and the figures are printed as msgs/s and MB/s:

* C{sync (Twisted)}: C{await producer.sendMessage(...)} one after another;
* C{sync (blocking)}: C{producer.send(...)} of the blocking API, from a plain
  thread, one after another (what a script sees);
* C{async (w=20000)}: C{asyncSendMessage} with Java's default 20000-unit
  sliding window, the sender waiting for room rather than spilling and
  letting the reactor run every 64 messages (as a sender fed by events
  does), until everything is answered;
* C{async (w=1000)}: the same with a 1000-unit window and no other pacing,
  so about 1000 puts are always in flight;
* C{raw sync} and C{raw pipelined}: the same puts written by a bare
  L{MetaClientProtocol} with 1 and 1000 in flight, no producer logic: the
  references for what the broker and one Python connection can do.

The last column is this process's CPU time per message (the client's own
cost, which does not depend on what else loads the machine).

Consumer part: the broker is filled with COUNT messages of SIZE bytes
(pipelined puts spread over C{--partitions} partitions of a fresh topic);
then one L{MessageConsumer} in direct mode (one fetch loop per partition,
Java's default 1 MiB C{maxSize}, a listener that only counts) reads them
all, timed from C{completeSubscribe} to the last message.

Without C{--broker} it starts a broker (C{twistd -n metaq}, a generated
server.ini, no ZooKeeper, normal flush policy C{unflushThreshold=1000}) on a
free loopback port and stops it afterwards.

    .venv/bin/python benchmarks/client.py producer
    .venv/bin/python benchmarks/client.py producer --count 50000 --size 1024
    .venv/bin/python benchmarks/client.py producer --broker meta://127.0.0.1:8123
    .venv/bin/python benchmarks/client.py consumer --count 100000 --size 1024
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from twisted.internet import defer, task

from metamorphosis.client.blocking import BlockingProducer, ReactorThread
from metamorphosis.client.connection import BrokerConnection, ConnectionPool
from metamorphosis.client.consumer import ConsumerConfig, MessageConsumer
from metamorphosis.client.message import Message
from metamorphosis.client.offsets import LocalOffsetStorage
from metamorphosis.client.recovery import DropPolicy
from metamorphosis.client.session import MetaClientConfig, MetaMessageSessionFactory
from metamorphosis.protocol import records

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from broker import awaitListening, freePort  # noqa: E402 (benchmarks/broker.py)


def startBroker(directory, unflushThreshold, numPartitions=1, unflushInterval=10000):
    """
    Run C{twistd -n metaq} on a free port.

    @return: C{(process, url)}
    """
    port = freePort()
    ini = os.path.join(directory, "server.ini")
    with open(ini, "w") as f:
        f.write(
            "[system]\nbrokerId=0\nnumPartitions=%d\nserverPort=%d\n"
            "unflushThreshold=%d\nunflushInterval=%d\ndataPath=%s\n"
            "[zookeeper]\nzk.zkEnable=false\n[topic=bench-*]\n"
            % (numPartitions, port, unflushThreshold, unflushInterval,
               os.path.join(directory, "data"))
        )
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    process = subprocess.Popen(
        [twistd, "--nodaemon", "--pidfile=", "--logfile", os.path.join(directory, "broker.log"),
         "metaq", "--config", ini, "--port", "tcp:%d:interface=127.0.0.1" % port],
        cwd=directory,
    )
    awaitListening(process, [("127.0.0.1", port)], "the broker in " + directory)
    return process, "meta://127.0.0.1:%d" % port


def report(label, count, size, elapsed, cpu=None):
    """
    One line of figures; C{cpu} is this process's CPU seconds for the run
    (the client's cost, whatever else loads the machine).
    """
    rate = count / elapsed
    cpuText = "" if cpu is None else "%12.1f" % (cpu / count * 1e6)
    print("%-18s %8d %6d %10.0f %8.1f%s" % (label, count, size, rate, rate * size / 1e6, cpuText))
    sys.stdout.flush()


async def measured(run):
    """
    Await C{run} (a coroutine or Deferred giving the elapsed seconds).

    @return: C{(elapsed, CPU seconds of this process meanwhile)}
    """
    cpu = time.process_time()
    elapsed = await run
    return elapsed, time.process_time() - cpu


async def syncTwisted(factory, topic, payload, count):
    producer = factory.createProducer()
    await producer.publish(topic)
    start = time.perf_counter()
    for _ in range(count):
        result = await producer.sendMessage(Message(topic, payload))
        if not result.success:
            raise RuntimeError("send failed: %s" % (result.errorMessage,))
    return time.perf_counter() - start


async def asyncSend(reactor, factory, topic, payload, count, window=20000, yieldEvery=None):
    """
    Fire-and-forget sends paced only by the sliding window (the sender
    waits for room instead of spilling); with C{yieldEvery} the sender also
    lets the reactor run after that many messages, as a sender fed by
    events would.
    """
    producer = factory.createAsyncProducer(slidingWindowSize=window)
    await producer.publish(topic)
    start = time.perf_counter()
    for i in range(count):
        message = Message(topic, payload)
        if not producer.asyncSendMessage(message):
            raise RuntimeError("message spilled: the window should have had room")
        if producer.window.used >= producer.window.size:
            await producer.whenWindowAvailable(message)
        elif yieldEvery and i % yieldEvery == 0:
            await task.deferLater(reactor, 0, lambda: None)
    await producer.flush()
    elapsed = time.perf_counter() - start
    if producer.failedCount:
        raise RuntimeError("%d async sends failed" % producer.failedCount)
    return elapsed


async def rawPipelined(reactor, url, topic, payload, count, inFlight=1000, partitions=1):
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
        protocol.put(topic, partition, payload, 0, checksum, timeout=30).addCallback(answered)

    start = time.perf_counter()
    for _ in range(min(inFlight, count)):
        sendOne()
    await done
    elapsed = time.perf_counter() - start
    await connection.stop()
    return elapsed


def syncBlocking(factory, reactor, topic, payload, count):
    """
    Run the blocking API from a plain thread, as a script would.
    """
    result = {}

    def script():
        producer = BlockingProducer(thread.call(factory.createProducer), thread)
        producer.publish(topic)
        start = time.perf_counter()
        for _ in range(count):
            if not producer.send(Message(topic, payload)).success:
                raise RuntimeError("send failed")
        result["elapsed"] = time.perf_counter() - start

    thread = ReactorThread(reactor)
    worker = threading.Thread(target=script)

    def run():
        worker.start()
        return task.deferLater(reactor, 0, waitFor)

    def waitFor():
        if worker.is_alive():
            return task.deferLater(reactor, 0.05, waitFor)
        if "elapsed" not in result:
            raise RuntimeError("the blocking producer failed")
        return result["elapsed"]

    return run()


async def producerBenchmark(reactor, args):
    directory = None
    process = None
    url = args.broker
    if url is None:
        directory = tempfile.mkdtemp(prefix="metaq-client-bench-")
        process, url = startBroker(directory, args.unflush_threshold)
    try:
        config = MetaClientConfig(
            serverUrl=url,
            partitions={},
            localMessagePath=os.path.join(directory or tempfile.gettempdir(), "local"),
            asyncStoragePath=os.path.join(directory or tempfile.gettempdir(), "async"),
        )
        factory = MetaMessageSessionFactory(config, reactor)
        await factory.start()
        payload = os.urandom(args.size)
        stamp = int(time.time())
        print("broker %s, %d-byte messages, one producer" % (url, args.size))
        print("%-18s %8s %6s %10s %8s %12s" % ("mode", "msgs", "size", "msgs/s", "MB/s", "client us/msg"))
        # Warm up the connection and the broker's partition.
        await syncTwisted(factory, "bench-client-%d-warm" % stamp, payload, 200)
        runs = [
            ("sync (Twisted)", lambda topic: syncTwisted(factory, topic, payload, args.count)),
            ("sync (blocking)", lambda topic: syncBlocking(factory, reactor, topic, payload, args.count)),
            ("async (w=20000)", lambda topic: asyncSend(
                reactor, factory, topic, payload, args.count, yieldEvery=64)),
            ("async (w=1000)", lambda topic: asyncSend(
                reactor, factory, topic, payload, args.count, window=1000)),
            ("raw sync", lambda topic: rawPipelined(
                reactor, url, topic, payload, args.count, inFlight=1)),
            ("raw pipelined", lambda topic: rawPipelined(reactor, url, topic, payload, args.count)),
        ]
        for n, (label, run) in enumerate(runs):
            elapsed, cpu = await measured(run("bench-client-%d-%d" % (stamp, n)))
            report(label, args.count, args.size, elapsed, cpu)
        await factory.close()
    finally:
        if process is not None:
            process.terminate()
            process.wait(30)
        if directory is not None and not args.keep:
            shutil.rmtree(directory, ignore_errors=True)


class Counter:
    """
    A listener that counts, and fires C{done} with the time of the last
    expected message.
    """

    def __init__(self, count):
        self.count = count
        self.received = 0
        self.done = defer.Deferred()

    def receiveMessages(self, message):
        self.received += 1
        if self.received == self.count:
            self.done.callback(time.perf_counter())


async def consumeAll(reactor, url, topic, partitions, count, maxSize, directory):
    """
    Read C{count} messages of C{topic} with one consumer per partition of
    one group (a single consumer for one partition).

    @return: the seconds it took.
    """
    counter = Counter(count)
    pool = ConnectionPool(reactor)
    consumers = []
    start = time.perf_counter()
    for partition in range(partitions):
        config = ConsumerConfig("benchgroup", serverUrl=url, partition="0-%d" % partition)
        storage = LocalOffsetStorage(os.path.join(directory, "offsets-%d" % partition))
        consumer = MessageConsumer(config, pool, offsetStorage=storage,
                                   recoverManager=DropPolicy(), reactor=reactor)
        consumer.subscribe(topic, maxSize, counter)
        await consumer.completeSubscribe()
        consumers.append(consumer)
    end = await counter.done
    for consumer in consumers:
        await consumer.shutdown()
    await pool.close()
    return end - start


async def consumerBenchmark(reactor, args):
    directory = tempfile.mkdtemp(prefix="metaq-client-bench-")
    process = None
    url = args.broker
    try:
        if url is None:
            process, url = startBroker(directory, 1000, args.partitions, unflushInterval=500)
        topic = "bench-client-%d-consumer" % int(time.time())
        payload = os.urandom(args.size)
        print("broker %s, %d messages of %d bytes in %d partition(s), maxSize %d"
              % (url, args.count, args.size, args.partitions, args.max_size))
        await rawPipelined(reactor, url, topic, payload, args.count, partitions=args.partitions)
        # Let the broker flush the tail: consumers only see flushed data.
        await task.deferLater(reactor, 1.5, lambda: None)
        elapsed = await consumeAll(reactor, url, topic, args.partitions, args.count,
                                   args.max_size, directory)
        print("%-18s %8s %6s %10s %8s" % ("mode", "msgs", "size", "msgs/s", "MB/s"))
        report("consumer", args.count, args.size, elapsed)
    finally:
        if process is not None:
            process.terminate()
            process.wait(30)
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)


def parseArguments(argv):
    parser = argparse.ArgumentParser(description="Python client throughput against our broker.")
    sub = parser.add_subparsers(dest="part", required=True)
    producer = sub.add_parser("producer", help="one producer: sync, blocking, async, raw")
    producer.add_argument("--count", type=int, default=20000, help="messages per mode")
    producer.add_argument("--size", type=int, default=1024, help="payload bytes")
    producer.add_argument("--broker", default=None, help="meta://host:port of a running broker")
    producer.add_argument("--unflush-threshold", type=int, default=1000,
                          help="unflushThreshold of the started broker (0 = group commit)")
    producer.add_argument("--keep", action="store_true", help="keep the started broker's files")
    producer.set_defaults(run=producerBenchmark)
    consumer = sub.add_parser("consumer", help="one consumer reading a filled topic")
    consumer.add_argument("--count", type=int, default=100000, help="messages to read")
    consumer.add_argument("--size", type=int, default=1024, help="payload bytes")
    consumer.add_argument("--partitions", type=int, default=1,
                          help="partitions of the topic (one fetch loop each)")
    consumer.add_argument("--max-size", type=int, default=1024 * 1024, help="fetch maxSize")
    consumer.add_argument("--broker", default=None,
                          help="meta://host:port of a running broker whose bench-* topics "
                          "have --partitions partitions")
    consumer.add_argument("--keep", action="store_true", help="keep the started broker's files")
    consumer.set_defaults(run=consumerBenchmark)
    return parser.parse_args(argv)


def main(argv=None):
    args = parseArguments(argv if argv is not None else sys.argv[1:])
    task.react(lambda reactor: defer.ensureDeferred(args.run(reactor, args)))


if __name__ == "__main__":
    main()
