"""
Tests for L{metamorphosis.client.producer} against an in-process fake
broker over real loopback sockets (direct C{meta://} mode).
"""

import zlib
from dataclasses import replace

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from metamorphosis.client.errors import MetaClientError, MetaTimeoutError
from metamorphosis.client.interfaces import ISendMessageCallback
from metamorphosis.client.message import Message
from metamorphosis.client.partition import Partition
from metamorphosis.client.producer import MessageProducer, SendResult, SlidingWindow
from metamorphosis.client.selectors import HashPartitionSelector, RandomPartitionSelector
from metamorphosis.client.session import MetaClientConfig, MetaMessageSessionFactory
from metamorphosis.protocol import records
from metamorphosis.protocol.commands import CommandParser, PutCommand
from metamorphosis.protocol.topics import IllegalTopicName
from tests.captures import capturePath, recordedStreams

from .fakebroker import FakeBroker


def sleep(seconds):
    return deferLater(reactor, seconds, lambda: None)


@defer.inlineCallbacks
def eventually(condition, timeout=5.0):
    """
    Wait until C{condition()} is true.
    """
    waited = 0.0
    while not condition():
        if waited > timeout:
            raise AssertionError("condition not met within %s s" % (timeout,))
        yield sleep(0.02)
        waited += 0.02


class ProducerTestsMixin:
    """
    A fake broker and a started direct-mode session factory.
    """

    partitions = {"test": 3}

    @defer.inlineCallbacks
    def setUp(self):
        self.broker = FakeBroker(partitions=3).listen()
        self.addCleanup(self.broker.stop)
        self.factory = yield self.makeFactory()

    @defer.inlineCallbacks
    def makeFactory(self, **options):
        settings = dict(
            serverUrl=self.broker.url,
            partitions=self.partitions,
            reconnectIntervalInMills=50,
            localMessagePath=self.mktemp(),
            asyncStoragePath=self.mktemp(),
        )
        settings.update(options)
        config = MetaClientConfig(**settings)
        factory = MetaMessageSessionFactory(config, reactor)
        self.addCleanup(factory.close)
        yield factory.start()
        return factory


class MessageProducerTests(ProducerTestsMixin, TestCase):
    @defer.inlineCallbacks
    def test_sendRoundRobin(self):
        """
        Messages go round-robin over the topic's partitions starting at index
        1; the result carries the id, partition and offset of the broker's
        reply, which are also set on the message.
        """
        producer = self.factory.createProducer()
        yield producer.publish("test")
        results = []
        for i in range(4):
            message = Message("test", b"message-%d" % i)
            result = yield producer.sendMessage(message)
            self.assertEqual(message.id, result.messageId)
            self.assertEqual(message.partition, result.partition)
            results.append(result)
        self.assertEqual([r.success for r in results], [True] * 4)
        self.assertEqual([r.partition.partition for r in results], [1, 2, 0, 1])
        self.assertEqual([r.offset for r in results], [0, 0, 0, 29])
        self.assertEqual(
            [(t, p, o, i) for t, p, o, i, f, b in self.broker.stored],
            [("test", r.partition.partition, r.offset, r.messageId) for r in results],
        )

    @defer.inlineCallbacks
    def test_checksumPut(self):
        """
        The put carries the CRC32 of its body (the 1.4.4+ seven-token form).
        """
        producer = self.factory.createProducer()
        yield producer.publish("test")
        yield producer.sendMessage(Message("test", b"hello"))
        (put,) = [c for c in self.broker.received if isinstance(c, PutCommand)]
        self.assertEqual(put.checksum, 907060870)
        self.assertIsNone(put.transactionKey)
        self.assertEqual(len(put.encode().split(b"\r\n")[0].split(b" ")), 7)

    @defer.inlineCallbacks
    def test_attribute(self):
        """
        An attribute is sent in front of the data with flag bit 0 set.
        """
        producer = self.factory.createProducer()
        yield producer.publish("test")
        yield producer.sendMessage(Message("test", b"data", "attr"))
        topic, partition, offset, msgId, flag, body = self.broker.stored[0]
        self.assertEqual(flag, 1)
        self.assertEqual(body, b"\x00\x00\x00\x04attrdata")
        self.assertEqual(records.decodePayload(body, flag), (b"data", "attr"))

    @defer.inlineCallbacks
    def test_brokerPicksWithoutPartitionMap(self):
        """
        In direct mode a topic with no known partition count is sent with
        partition -1; the result names the partition the broker chose, on
        the direct-mode broker (id 0, as for topics of the partition map).
        """
        producer = self.factory.createProducer()
        yield producer.publish("other")
        result = yield producer.sendMessage(Message("other", b"x"))
        (put,) = [c for c in self.broker.received if isinstance(c, PutCommand)]
        self.assertEqual(put.partition, -1)
        self.assertTrue(result.success)
        self.assertEqual(result.partition, Partition(0, 0))
        self.assertEqual(str(result.partition), "0-0")

    @defer.inlineCallbacks
    def test_closedPartition(self):
        """
        A 403 gives a failed result whose error message is "403", as Java's.
        """
        self.broker.closedPartitions.add(1)
        producer = self.factory.createProducer()
        yield producer.publish("test")
        result = yield producer.sendMessage(Message("test", b"x"))
        self.assertEqual(result, SendResult(False, None, -1, "403"))

    @defer.inlineCallbacks
    def test_errorReply(self):
        """
        Any other error reply gives a failed result with the broker's text.
        """
        self.broker.partitions = 1
        producer = self.factory.createProducer()
        yield producer.publish("test")
        result = yield producer.sendMessage(Message("test", b"x"))
        self.assertFalse(result.success)
        self.assertEqual(result.errorMessage, "failed.Detail:wrong partition 1")

    @defer.inlineCallbacks
    def test_timeout(self):
        self.broker.silent = True
        producer = self.factory.createProducer()
        yield producer.publish("test")
        yield self.assertFailure(producer.sendMessage(Message("test", b"x"), timeout=0.2), MetaTimeoutError)

    @defer.inlineCallbacks
    def test_unpublished(self):
        producer = self.factory.createProducer()
        error = yield self.assertFailure(producer.sendMessage(Message("nope", b"x")), MetaClientError)
        self.assertEqual(
            str(error), "There is no aviable partition for topic nope,maybe you don't publish it at first?"
        )

    @defer.inlineCallbacks
    def test_defaultTopic(self):
        """
        Unpublished topics use the default topic's partitions.
        """
        producer = self.factory.createProducer()
        yield producer.setDefaultTopic("test")
        result = yield producer.sendMessage(Message("elsewhere", b"x"))
        self.assertTrue(result.success)
        self.assertEqual(self.broker.stored[0][:2], ("elsewhere", 1))
        self.assertRaises(MetaClientError, producer.setDefaultTopic, "other")

    @defer.inlineCallbacks
    def test_invalidMessages(self):
        producer = self.factory.createProducer()
        yield producer.publish("test")
        renamed = Message("test", b"x")
        renamed.topic = "../escape"
        for message in (None, Message("test", None), renamed):
            yield self.assertFailure(producer.sendMessage(message), MetaClientError)
        self.assertEqual(self.broker.received, [])

    def test_illegalTopics(self):
        """
        A topic name no broker accepts is refused before anything is sent.
        """
        producer = self.factory.createProducer()
        for topic in ("", "  ", "../x", "/tmp/abs", "a\x00b", "x" * 250, ".", ".."):
            self.assertRaises(IllegalTopicName, Message, topic, b"x")
            self.assertRaises(IllegalTopicName, producer.publish, topic)
        self.assertEqual(Message("com.example.orders", b"x").topic, "com.example.orders")

    @defer.inlineCallbacks
    def test_shutdown(self):
        producer = self.factory.createProducer()
        yield producer.publish("test")
        yield producer.shutdown()
        yield self.assertFailure(producer.sendMessage(Message("test", b"x")), MetaClientError)

    @defer.inlineCallbacks
    def test_callbackForm(self):
        """
        The callback form reports results, a timeout as a failed result with
        gecko's text, and unsendable messages as exceptions.
        """

        @implementer(ISendMessageCallback)
        class Callback:
            def __init__(self):
                self.done = defer.Deferred()

            def onMessageSent(self, result):
                self.done.callback(result)

            def onException(self, failure):
                self.done.callback(("exception", failure))

        producer = self.factory.createProducer()
        yield producer.publish("test")
        callback = Callback()
        producer.sendMessageWithCallback(Message("test", b"x"), callback)
        result = yield callback.done
        self.assertTrue(result.success)

        self.broker.silent = True
        callback = Callback()
        producer.sendMessageWithCallback(Message("test", b"x"), callback, timeout=0.1)
        result = yield callback.done
        self.assertEqual(result, SendResult(False, None, -1, "等待响应超时"))

        callback = Callback()
        producer.sendMessageWithCallback(Message("unpublished", b"x"), callback)
        kind, failure = yield callback.done
        self.assertTrue(failure.check(MetaClientError))

    @defer.inlineCallbacks
    def test_reconnectsAfterBrokerRestart(self):
        """
        A broker restarted on the same port is reconnected to; sends made
        while it is down wait for it within their timeout.
        """
        producer = self.factory.createProducer()
        yield producer.publish("test")
        yield producer.sendMessage(Message("test", b"before"))
        portNumber = self.broker.portNumber
        yield self.broker.stop()
        yield eventually(lambda: not self.factory.connections.get(self.broker.url).connected)
        pending = producer.sendMessage(Message("test", b"during"), timeout=5)
        yield sleep(0.2)
        self.broker = FakeBroker(partitions=3).listen(portNumber)
        self.addCleanup(self.broker.stop)
        result = yield pending
        self.assertTrue(result.success)
        self.assertEqual(self.broker.payloads(), [b"during"])

    @defer.inlineCallbacks
    def test_stats(self):
        stats = yield self.factory.getStats(self.broker.url)
        self.assertEqual(stats, {"pid": "1", "uptime": "5"})


class SlidingWindowTests(TestCase):
    def test_window(self):
        window = SlidingWindow(3)
        self.assertTrue(window.tryAcquire(2))
        self.assertFalse(window.tryAcquire(2))
        empty = window.whenEmpty()
        space = window.whenAvailable(2)
        self.assertNoResult(space)
        window.release(1)
        self.successResultOf(space)
        self.assertNoResult(empty)
        window.release(1)
        self.successResultOf(empty)


class AsyncProducerTests(ProducerTestsMixin, TestCase):
    @defer.inlineCallbacks
    def test_fireAndForget(self):
        producer = self.factory.createAsyncProducer()
        yield producer.publish("test")
        for i in range(100):
            self.assertTrue(producer.asyncSendMessage(Message("test", b"m%d" % i)))
        self.assertEqual(producer.window.used, 100)
        yield producer.flush()
        self.assertEqual(producer.window.used, 0)
        self.assertEqual(sorted(self.broker.payloads()), sorted(b"m%d" % i for i in range(100)))

    @defer.inlineCallbacks
    def test_overflowKeptAndRecovered(self):
        """
        Messages that do not fit in the window are kept locally and re-sent
        by the recovery task; none is lost.
        """
        producer = self.factory.createAsyncProducer(slidingWindowSize=3)
        yield producer.publish("test")
        sent = [producer.asyncSendMessage(Message("test", b"m%d" % i)) for i in range(5)]
        self.assertEqual(sent, [True, True, True, False, False])
        yield producer.flush()
        yield producer.storage.whenReady()
        yield eventually(lambda: producer.storage.count("test", Partition(-1, -1)) == 2)
        recovered = yield self.factory.recovery.recoverAll()
        self.assertIsNone(recovered)
        self.assertEqual(producer.storage.count("test", Partition(-1, -1)), 0)
        self.assertEqual(sorted(self.broker.payloads()), [b"m%d" % i for i in range(5)])


class AsyncProducerDisconnectedTests(ProducerTestsMixin, TestCase):
    @defer.inlineCallbacks
    def test_keptWhileDisconnected(self):
        """
        Without a connection to the broker a message is kept locally at once
        (Java's send fails immediately) and re-sent when the broker is back.
        """
        producer = self.factory.createAsyncProducer()
        yield producer.publish("test")
        portNumber = self.broker.portNumber
        yield self.broker.stop()
        connection = self.factory.connections.get(self.broker.url)
        yield eventually(lambda: not connection.connected)
        self.assertFalse(producer.asyncSendMessage(Message("test", b"while-down")))
        yield eventually(lambda: producer.storage.count("test", Partition(-1, -1)) == 1)
        self.broker = FakeBroker(partitions=3).listen(portNumber)
        self.addCleanup(self.broker.stop)
        yield eventually(lambda: self.broker.payloads() == [b"while-down"])
        yield eventually(lambda: producer.storage.count("test", Partition(-1, -1)) == 0)


class OrderedProducerTests(ProducerTestsMixin, TestCase):
    partitions = {"test": 2}

    @defer.inlineCallbacks
    def setUp(self):
        self.broker = FakeBroker(partitions=2).listen()
        self.addCleanup(self.broker.stop)
        self.factory = yield self.makeFactory(partitionsInfo={"test": "0:2"})

    def keyFor(self, partition):
        for n in range(1000):
            key = "key-%d" % n
            if zlib.crc32(key.encode()) % 2 == partition:
                return key

    @defer.inlineCallbacks
    def test_inOrderToKeyPartition(self):
        producer = self.factory.createOrderedProducer()
        yield producer.publish("test")
        key = self.keyFor(1)
        results = yield defer.gatherResults(
            [producer.sendMessage(Message("test", b"%d" % i, key)) for i in range(20)]
        )
        self.assertEqual({r.partition for r in results}, {Partition(0, 1)})
        self.assertEqual(self.broker.payloads(partition=1), [b"%d" % i for i in range(20)])

    @defer.inlineCallbacks
    def test_spillAndReplay(self):
        """
        While the broker is down messages are kept locally ("send to local");
        once it is back the kept ones are re-sent before any new one, in
        order.
        """
        producer = self.factory.createOrderedProducer()
        yield producer.publish("test")
        key = self.keyFor(0)
        result = yield producer.sendMessage(Message("test", b"0", key))
        self.assertTrue(result.success)
        portNumber = self.broker.portNumber
        yield self.broker.stop()
        yield eventually(lambda: not self.factory.connections.get(self.broker.url).connected)
        for i in range(1, 6):
            result = yield producer.sendMessage(Message("test", b"%d" % i, key))
            self.assertEqual(result, SendResult(True, Partition(0, 0), -1, "send to local"))
        self.assertEqual(producer.storage.count("test", Partition(0, 0)), 5)
        self.broker = FakeBroker(partitions=2).listen(portNumber)
        self.addCleanup(self.broker.stop)
        yield eventually(lambda: self.factory.connections.get(self.broker.url).connected)
        result = yield producer.sendMessage(Message("test", b"6", key))
        self.assertTrue(result.success)
        self.assertNotEqual(result.offset, -1)
        self.assertEqual(self.broker.payloads(), [b"%d" % i for i in range(1, 7)])
        self.assertEqual(producer.storage.count("test", Partition(0, 0)), 0)

    @defer.inlineCallbacks
    def test_forbiddenKeptLocally(self):
        """
        A 403 (closed partition) keeps the message locally.
        """
        producer = self.factory.createOrderedProducer()
        yield producer.publish("test")
        self.broker.closedPartitions.add(0)
        key = self.keyFor(0)
        result = yield producer.sendMessage(Message("test", b"x", key))
        self.assertEqual(result.errorMessage, "send to local")
        self.broker.closedPartitions.clear()
        sent = yield producer.recover("test", Partition(0, 0))
        self.assertEqual(sent, 1)
        self.assertEqual(self.broker.payloads(), [b"x"])

    @defer.inlineCallbacks
    def test_longBacklogKeptThenDrained(self):
        """
        With more than 20 messages kept, new messages are kept behind them at
        once and background replays run; once the partition opens
        everything reaches it in order.
        """
        producer = self.factory.createOrderedProducer()
        yield producer.publish("test")
        self.broker.closedPartitions.add(0)
        key = self.keyFor(0)
        for i in range(25):
            result = yield producer.sendMessage(Message("test", b"%d" % i, key))
            self.assertEqual(result.errorMessage, "send to local")
        self.assertEqual(self.broker.payloads(), [])
        self.broker.closedPartitions.clear()
        result = yield producer.sendMessage(Message("test", b"25", key))
        self.assertTrue(result.success)
        yield eventually(lambda: len(self.broker.stored) == 26)
        self.assertEqual(self.broker.payloads(), [b"%d" % i for i in range(26)])
        yield eventually(lambda: producer.storage.count("test", Partition(0, 0)) == 0)

    @defer.inlineCallbacks
    def test_keptAcrossRestart(self):
        """
        Kept messages survive the producer process: a new factory on the same
        local path re-sends them.
        """
        path = self.factory.config.localMessagePath
        producer = self.factory.createOrderedProducer()
        yield producer.publish("test")
        self.broker.closedPartitions.add(1)
        key = self.keyFor(1)
        for i in range(3):
            yield producer.sendMessage(Message("test", b"%d" % i, key))
        yield self.factory.close()
        self.broker.closedPartitions.clear()
        factory = yield self.makeFactory(partitionsInfo={"test": "0:2"}, localMessagePath=path)
        producer = factory.createOrderedProducer()
        yield producer.publish("test")
        yield producer.storage.whenReady()
        self.assertEqual(producer.storage.count("test", Partition(0, 1)), 3)
        result = yield producer.sendMessage(Message("test", b"3", key))
        self.assertTrue(result.success)
        self.assertEqual(self.broker.payloads(), [b"0", b"1", b"2", b"3"])


class JavaWireTests(ProducerTestsMixin, TestCase):
    """
    The producer writes what the Java producer wrote in the conformance
    transcripts, put for put (opaques aside, which are process-wide).
    """

    partitions = {"meta-test": 1, "test": 2}

    @defer.inlineCallbacks
    def assertSameAsJava(self, scenario):
        streams = recordedStreams(capturePath("raw", scenario + ".jsonl"))
        javaPuts = [c for c in CommandParser().parse(streams[(1, "C->S")]) if isinstance(c, PutCommand)]
        self.assertTrue(javaPuts)
        producer = self.factory.createProducer()
        for topic in {put.topic for put in javaPuts}:
            yield producer.publish(topic)
        for put in javaPuts:
            data, attribute = records.decodePayload(put.data, put.flag)
            result = yield producer.sendMessage(Message(put.topic, data, attribute))
            self.assertTrue(result.success)
        ours = list(CommandParser().parse(self.broker.raw))
        self.assertEqual(
            [replace(c, opaque=0) for c in ours], [replace(c, opaque=0) for c in javaPuts]
        )

        def withoutOpaques(stream):
            return [line.rsplit(b" ", 1)[0] for line in stream.split(b"\r\n") if line.startswith(b"put ")]

        self.assertEqual(withoutOpaques(self.broker.raw), withoutOpaques(streams[(1, "C->S")]))

    def test_syncPuts(self):
        return self.assertSameAsJava("01-producer-startup-sync-put")

    def test_attribute(self):
        return self.assertSameAsJava("02-producer-sync-put-with-attribute")

    def test_roundRobinTwoPartitions(self):
        """
        Java's round-robin order over two partitions: 1, 0, 1, 0.
        """
        return self.assertSameAsJava("03-producer-sync-put-binary-2-partitions")


class RecoveryOnReconnectTests(ProducerTestsMixin, TestCase):
    partitions = {"test": 2}

    @defer.inlineCallbacks
    def setUp(self):
        self.broker = FakeBroker(partitions=2).listen()
        self.addCleanup(self.broker.stop)
        self.factory = yield self.makeFactory(partitionsInfo={"test": "0:2"})

    @defer.inlineCallbacks
    def test_replayedWhenBrokerReturns(self):
        """
        Kept messages are re-sent as soon as the connection to their broker
        is back, without waiting for a new message or the periodic task.
        """
        producer = self.factory.createOrderedProducer()
        yield producer.publish("test")
        portNumber = self.broker.portNumber
        yield self.broker.stop()
        connection = self.factory.connections.get(self.broker.url)
        yield eventually(lambda: not connection.connected)
        for i in range(3):
            result = yield producer.sendMessage(Message("test", b"%d" % i, "k"))
            self.assertEqual(result.errorMessage, "send to local")
        self.broker = FakeBroker(partitions=2).listen(portNumber)
        self.addCleanup(self.broker.stop)
        yield eventually(lambda: len(self.broker.stored) == 3)
        self.assertEqual(self.broker.payloads(), [b"0", b"1", b"2"])
        yield eventually(lambda: not producer.storage.keys())


class _Connection:
    def __init__(self, connected):
        self.connected = connected


class _TwoBrokers:
    """
    What a producer asks its session factory while selecting: brokers 0 and
    1 with two partitions each, and whether each has a connection up.
    """

    def __init__(self, up):
        self.urls = {0: "meta://127.0.0.1:1", 1: "meta://127.0.0.1:2"}
        self.partitions = [Partition(b, n) for b in (0, 1) for n in (0, 1)]
        self.connections = {self.urls[b]: _Connection(b in up) for b in (0, 1)}
        self.discovery = self

    def partitionsFor(self, topic):
        return self.partitions

    def brokerUrlFor(self, topic, partition):
        return self.urls[partition.brokerId]


class UnreachableBrokerTests(TestCase):
    """
    Round-robin and random selection leave out the partitions of a broker
    the producer has no connection to (a crashed broker is listed in
    ZooKeeper until its session expires); key-based selection does not.
    """

    def select(self, up, selector=None, count=8, attribute=None):
        producer = MessageProducer(_TwoBrokers(up), selector)
        return [producer._select(Message("t", b"x", attribute=attribute))[0] for _ in range(count)]

    def test_roundRobinSkipsDisconnectedBroker(self):
        chosen = self.select(up={0})
        self.assertEqual({p.brokerId for p in chosen}, {0})
        self.assertEqual({p.partition for p in chosen}, {0, 1})

    def test_randomSkipsDisconnectedBroker(self):
        chosen = self.select(up={1}, selector=RandomPartitionSelector(), count=40)
        self.assertEqual({p.brokerId for p in chosen}, {1})

    def test_allDisconnected(self):
        """
        With no broker reachable every partition stays a candidate: the
        send waits for a connection within its timeout.
        """
        chosen = self.select(up=set())
        self.assertEqual(set(chosen), set(_TwoBrokers(set()).partitions))

    def test_keyedSelectionUnchanged(self):
        """
        A key keeps its partition while its broker is away, as in Java.
        """
        everywhere = self.select(up={0, 1}, selector=HashPartitionSelector(), attribute="k", count=1)
        self.assertEqual(
            self.select(up={0} if everywhere[0].brokerId == 1 else {1},
                        selector=HashPartitionSelector(), attribute="k", count=1),
            everywhere)
