"""
The Python producer against real brokers (C{twistd -n metaq} processes)
registered in a real ZooKeeper: discovery across two brokers and several
partitions, a broker restarted in the middle of production, and the
blocking API.
"""

import os
import re
import socket
import sys
import time

from kazoo.client import KazooClient
from twisted.internet import defer, error, protocol, reactor, threads
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from metamorphosis.client.blocking import BlockingMessageSessionFactory, ReactorThread
from metamorphosis.client.connection import BrokerConnection
from metamorphosis.client.errors import MetaClientError
from metamorphosis.client.message import Message
from metamorphosis.client.partition import Partition
from metamorphosis.client.session import MetaClientConfig, MetaMessageSessionFactory
from metamorphosis.protocol.commands import ValueCommand
from metamorphosis.protocol.records import decodeRecords

from ..waiting import waitFor
from ..zookeeper import uniqueRoot, zookeeperAddress

TWISTD = os.environ.get(
    "METAQ_TEST_TWISTD", os.path.join(os.path.dirname(sys.executable), "twistd")
)


def freePort():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Output(protocol.ProcessProtocol):
    def __init__(self):
        self.output = b""
        self.listening = defer.Deferred()
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.output += data
        if not self.listening.called and re.search(rb"listening on 127\.0\.0\.1:", self.output):
            self.listening.callback(None)

    errReceived = outReceived

    def processEnded(self, reason):
        if not self.listening.called:
            self.listening.errback(RuntimeError(self.output.decode(errors="replace")))
        self.ended.callback(None)


class Broker:
    """
    One broker process with its own server.ini and data directory, on a
    fixed port so that it can be restarted where clients expect it.
    """

    def __init__(self, testCase, brokerId, topics, zkRoot):
        self.testCase = testCase
        self.brokerId = brokerId
        self.topics = list(topics)
        self.zkRoot = zkRoot
        self.port = freePort()
        self.directory = os.path.abspath(testCase.mktemp())
        os.makedirs(self.directory)
        self.ini = os.path.join(self.directory, "server.ini")
        with open(self.ini, "w") as f:
            f.write(
                "[system]\nbrokerId=%d\nhostName=127.0.0.1\nserverPort=%d\nnumPartitions=1\n"
                "dataPath=%s\nunflushThreshold=0\n"
                "[zookeeper]\nzk.zkEnable=true\nzk.zkConnect=%s\nzk.zkRoot=%s\nzk.zkSyncTimeMs=0\n"
                % (brokerId, self.port, os.path.join(self.directory, "data"), zookeeperAddress(), zkRoot)
            )
            for topic, partitions in topics.items():
                f.write("[topic=%s]\nnumPartitions=%d\n" % (topic, partitions))
        self.url = "meta://127.0.0.1:%d" % self.port
        self._process = None
        testCase.addCleanup(self.kill)

    @defer.inlineCallbacks
    def start(self):
        """
        Start the broker and wait until it has registered its topics in
        ZooKeeper.
        """
        if not os.path.exists(TWISTD):
            raise SkipTest("no twistd at %s" % TWISTD)
        output = _Output()
        self._process = (reactor.spawnProcess(
            output,
            TWISTD,
            [TWISTD, "--nodaemon", "--pidfile=", "metaq", "--config", self.ini,
             "--port", "tcp:%d:interface=127.0.0.1" % self.port],
            # twistd's own environment finds its packages; trial's
            # PYTHONPATH would point another checkout's twistd at this one.
            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
            path=self.directory,
        ), output)
        try:
            yield output.listening
        except RuntimeError as e:
            if "Unknown command: metaq" in str(e):
                raise SkipTest("the metaq twistd plugin is not installed")
            raise
        yield threads.deferToThread(self._awaitRegistration)

    def _awaitRegistration(self):
        zookeeper = KazooClient(hosts=zookeeperAddress())
        zookeeper.start(10)
        try:
            for topic in self.topics:
                path = "%s/brokers/topics-pub/%s/%d-m" % (self.zkRoot, topic, self.brokerId)
                for _ in range(300):
                    if zookeeper.exists(path):
                        break
                    time.sleep(0.05)
                else:
                    raise AssertionError("broker %d did not register %s" % (self.brokerId, path))
        finally:
            zookeeper.stop()
            zookeeper.close()

    @defer.inlineCallbacks
    def stop(self):
        """
        Stop the broker with SIGTERM (it unregisters from ZooKeeper).
        """
        transport, output = self._process
        transport.signalProcess("TERM")
        yield output.ended

    def kill(self):
        if self._process is None:
            return
        transport, output = self._process
        try:
            transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            return
        return output.ended


@defer.inlineCallbacks
def eventually(condition, timeout=15.0):
    waited = 0.0
    while not condition():
        if waited > timeout:
            raise AssertionError("condition not met within %s s" % (timeout,))
        yield deferLater(reactor, 0.05, lambda: None)
        waited += 0.05


@defer.inlineCallbacks
def fetchAll(url, topic, partition):
    """
    Every message stored in one partition of a broker, read with gets.
    """
    connection = BrokerConnection(url, reactor)
    try:
        protocol = yield connection.whenConnected(10)
        messages, offset = [], 0
        while True:
            reply = yield protocol.get(topic, "it-check", partition, offset, 1024 * 1024)
            if not isinstance(reply, ValueCommand):
                break
            found, consumed = decodeRecords(reply.data)
            messages.extend(found)
            offset += consumed
        return messages
    finally:
        yield connection.stop()


class ProducerIntegrationTests(TestCase):
    timeout = 120

    def setUp(self):
        self.zkAddress = zookeeperAddress()
        self.zkRoot = uniqueRoot("producer-it")

    @defer.inlineCallbacks
    def factory(self, **options):
        factory = MetaMessageSessionFactory(
            MetaClientConfig(
                zkConnect=self.zkAddress,
                zkRoot=self.zkRoot,
                reconnectIntervalInMills=100,
                localMessagePath=self.mktemp(),
                asyncStoragePath=self.mktemp(),
                **options,
            ),
            reactor,
        )
        self.addCleanup(factory.close)
        yield factory.start()
        return factory

    @defer.inlineCallbacks
    def test_twoBrokersSeveralPartitions(self):
        """
        The producer finds both brokers and all five partitions in ZooKeeper,
        sends round-robin in Java's order, and every message is stored where
        its SendResult says.
        """
        brokers = [
            Broker(self, 0, {"it": 2}, self.zkRoot),
            Broker(self, 1, {"it": 3}, self.zkRoot),
        ]
        for broker in brokers:
            yield broker.start()
        factory = yield self.factory()
        producer = factory.createProducer()
        yield producer.publish("it")
        yield eventually(lambda: len(factory.discovery.partitionsFor("it")) == 5)
        partitions = [Partition(0, 0), Partition(0, 1), Partition(1, 0), Partition(1, 1), Partition(1, 2)]
        self.assertEqual(list(factory.discovery.partitionsFor("it")), partitions)
        results = []
        for i in range(20):
            message = Message("it", b"payload-%d" % i, "attr-%d" % i if i % 3 == 0 else None)
            result = yield producer.sendMessage(message)
            self.assertTrue(result.success, result)
            results.append((message, result))
        self.assertEqual(
            [result.partition for message, result in results],
            [partitions[(i + 1) % 5] for i in range(20)],
        )
        for partition in partitions:
            url = brokers[partition.brokerId].url
            stored = yield fetchAll(url, "it", partition.partition)
            expected = [(r.messageId, m.data, m.attribute) for m, r in results if r.partition == partition]
            self.assertEqual([(s.id, s.data, s.attribute) for s in stored], expected)
            offsets = [r.offset for m, r in results if r.partition == partition]
            self.assertEqual(offsets, sorted(offsets))

    @defer.inlineCallbacks
    def test_brokerRestartedMidProduction(self):
        """
        A broker restarted while a producer sends: sends fail clearly (or
        wait and succeed) while it is down, succeed again once it is back,
        and every message reported as sent is stored.
        """
        broker = Broker(self, 0, {"restart": 2}, self.zkRoot)
        yield broker.start()
        factory = yield self.factory()
        producer = factory.createProducer()
        yield producer.publish("restart")
        yield eventually(lambda: len(factory.discovery.partitionsFor("restart")) == 2)

        sent, errors, uncertain = [], [], set()
        state = {"running": True}

        @defer.inlineCallbacks
        def produce():
            i = 0
            while state["running"]:
                message = Message("restart", b"m-%d" % i)
                i += 1
                try:
                    result = yield producer.sendMessage(message, timeout=2)
                except MetaClientError as e:
                    # The put may or may not have been stored (a reply lost
                    # with the connection): at least once, as in Java.
                    errors.append(e)
                    uncertain.add(message.data)
                    yield deferLater(reactor, 0.05, lambda: None)
                    continue
                if result.success:
                    sent.append((result.partition.partition, message.data))
                else:
                    errors.append(result.errorMessage)

        running = produce()
        yield eventually(lambda: len(sent) >= 50)
        yield broker.stop()
        yield eventually(lambda: not factory.discovery.partitionsFor("restart"))
        before = len(sent)
        yield broker.start()
        yield eventually(lambda: len(sent) >= before + 50)
        state["running"] = False
        yield running
        self.assertTrue(errors, "the producer should have noticed the broker going away")
        stored = []
        for partition in (0, 1):
            records = yield fetchAll(broker.url, "restart", partition)
            stored.extend((partition, r.data) for r in records)
        self.assertEqual(len(stored), len(set(stored)), "a message was stored twice")
        self.assertEqual(set(sent) - set(stored), set(), "a message reported as sent is missing")
        self.assertEqual({data for partition, data in set(stored) - set(sent)} - uncertain, set())

    @defer.inlineCallbacks
    def test_blockingApi(self):
        """
        A script-style blocking producer against a real broker.
        """
        broker = Broker(self, 0, {"blocking": 1}, self.zkRoot)
        yield broker.start()
        config = MetaClientConfig(
            zkConnect=self.zkAddress,
            zkRoot=self.zkRoot,
            localMessagePath=self.mktemp(),
            asyncStoragePath=self.mktemp(),
        )
        thread = ReactorThread(reactor)

        def script():
            with BlockingMessageSessionFactory(config, thread) as factory:
                producer = factory.createProducer()
                producer.publish("blocking")
                results = [producer.send(Message("blocking", b"b-%d" % i)) for i in range(10)]
                asyncProducer = factory.createAsyncProducer()
                asyncProducer.publish("blocking")
                for i in range(100):
                    asyncProducer.sendAsync(Message("blocking", b"a-%d" % i))
                asyncProducer.flush()
                return results

        results = yield threads.deferToThread(script)
        self.assertTrue(all(r.success for r in results))
        self.assertEqual([r.offset for r in results], sorted(r.offset for r in results))
        stored = yield fetchAll(broker.url, "blocking", 0)
        self.assertEqual(len(stored), 110)
        self.assertEqual([r.data for r in stored[:10]], [b"b-%d" % i for i in range(10)])

    @defer.inlineCallbacks
    def test_orderedSpillAndReplay(self):
        """
        An ordered producer keeps the messages of a key locally while its
        broker is gone from ZooKeeper and re-sends them, in order and before
        newer ones, once the broker is back.
        """
        broker = Broker(self, 0, {"ordered": 2}, self.zkRoot)
        yield broker.start()
        factory = yield self.factory(partitionsInfo={"ordered": "0:2"})
        producer = factory.createOrderedProducer()
        yield producer.publish("ordered")
        yield eventually(lambda: len(factory.discovery.partitionsFor("ordered")) == 2)
        results = []
        for i in range(5):
            results.append((yield producer.sendMessage(Message("ordered", b"%d" % i, "key"))))
        partition = results[0].partition
        self.assertTrue(all(r.success and r.offset >= 0 and r.partition == partition for r in results))
        yield broker.stop()
        yield eventually(lambda: not factory.discovery.partitionsFor("ordered"))
        for i in range(5, 10):
            result = yield producer.sendMessage(Message("ordered", b"%d" % i, "key"))
            self.assertEqual((result.success, result.offset, result.errorMessage), (True, -1, "send to local"))
        self.assertEqual(producer.storage.count("ordered", partition), 5)
        yield broker.start()
        yield eventually(lambda: producer.storage.count("ordered", partition) == 0)
        result = yield producer.sendMessage(Message("ordered", b"10", "key"))
        self.assertTrue(result.success)
        stored = yield fetchAll(broker.url, "ordered", partition.partition)
        self.assertEqual([r.data for r in stored], [b"%d" % i for i in range(11)])

    @defer.inlineCallbacks
    def test_heartbeats(self):
        """
        An idle connection sends version heartbeats, which our broker
        answers: the connection stays the same and no heartbeat fails.
        """
        broker = Broker(self, 0, {"idle": 1}, self.zkRoot)
        yield broker.start()
        factory = yield self.factory(heartbeatIntervalInMills=100)
        producer = factory.createProducer()
        yield producer.publish("idle")
        yield eventually(lambda: factory.discovery.partitionsFor("idle"))
        result = yield producer.sendMessage(Message("idle", b"x"))
        self.assertTrue(result.success)
        protocol = factory.connections.get(broker.url)._protocol
        sent = []
        original = protocol.version
        protocol.version = lambda *a, **kw: sent.append(1) or original(*a, **kw)
        yield waitFor(lambda: len(sent) >= 5, what="five heartbeats")
        self.assertGreaterEqual(len(sent), 5)
        self.assertEqual(protocol._heartbeatFailures, 0)
        self.assertIs(factory.connections.get(broker.url)._protocol, protocol)
        result = yield producer.sendMessage(Message("idle", b"y"))
        self.assertTrue(result.success)
