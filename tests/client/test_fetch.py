"""
The fetch loop's rules (docs/client-consumer.md) on scripted
broker replies: offsets, back-off, retries, maxSize growth, local recovery
hand-off, checksum resets, duplicates, filters, manual acknowledgement.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from metamorphosis.client.consumer import ConsumerConfig, MessageConsumer
from metamorphosis.client.errors import MetaClientError, MetaTimeoutError
from metamorphosis.client.fetch import FetchManager, FetchRequest, MessageIdCache
from metamorphosis.client.offsets import PartitionOffset
from metamorphosis.client.partition import Partition
from metamorphosis.protocol.commands import ResultCommand, ValueCommand
from metamorphosis.protocol.records import encodePayload, encodeRecord


def record(msgId, data, attribute=None):
    body, flag = encodePayload(data, attribute)
    return encodeRecord(msgId, flag, body)


class FakeConsumer:
    """
    What L{FetchManager} asks of its consumer, with scripted fetches.
    """

    group = "g"

    def __init__(self, **config):
        self.config = ConsumerConfig("g", **config)
        self.replies = []
        self.fetched = []
        self.received = []
        self.recovered = []
        self.offsets = []
        self.failures = 0
        self.filter = None
        self.listener = self

    def receiveMessages(self, message):
        if self.failures:
            self.failures -= 1
            raise RuntimeError("listener failure")
        self.received.append(message)
        if self.onMessage is not None:
            self.onMessage(message)

    onMessage = None

    async def fetch(self, request):
        self.fetched.append((request.offset, request.maxSize))
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def offsetFor(self, request):
        return self.offsets.pop(0)

    def subscriptionOf(self, topic):
        return self.listener, self.filter

    def appendCouldNotProcess(self, message):
        self.recovered.append(message)
        return defer.succeed(None)


class FetchLoopTests(TestCase):
    def setUp(self):
        self.consumer = FakeConsumer()
        self.manager = FetchManager(self.consumer, Clock(), MessageIdCache())
        self.manager.stopped = False
        self.info = PartitionOffset("t", Partition(0, 1), 100)
        self.request = FetchRequest("meta://127.0.0.1:1", self.info, 1024)

    def round(self, *replies):
        self.consumer.replies.extend(replies)
        return self.successResultOf(
            defer.ensureDeferred(self.manager.processRequest(self.request)))

    def test_consumesInOrder(self):
        """
        Each complete record goes to the listener; the offset moves past
        the last complete one (a partial tail waits for the next fetch).
        """
        a, b, c = record(1, b"a"), record(2, b"bb", "tag"), record(3, b"ccc")
        self.round(a + b + c[:-1])
        self.assertEqual([(m.id, m.data, m.attribute, m.partition, m.topic)
                          for m in self.consumer.received],
                         [(1, b"a", None, Partition(0, 1), "t"),
                          (2, b"bb", "tag", Partition(0, 1), "t")])
        self.assertEqual((self.info.offset, self.info.messageId, self.info.modified),
                         (100 + len(a) + len(b), 2, True))
        self.assertEqual((self.request.delay, self.request.retries), (0, 0))
        self.round(c)
        self.assertEqual(self.consumer.fetched[1], (100 + len(a) + len(b), 1024))
        self.assertEqual(self.info.offset, 100 + len(a + b + c))

    def test_backOff(self):
        """
        Nothing to read: the delay grows by a tenth of the maximum up to
        it; "no data" replies count no retry.
        """
        delays = []
        for _ in range(12):
            self.round(None)
            delays.append(self.request.delay)
        self.assertEqual(delays, [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.0, 5.0])
        self.assertEqual(self.request.retries, 0)
        self.round(record(1, b"x"))
        self.assertEqual(self.request.delay, 0)

    def test_errorsBackOff(self):
        self.round(MetaTimeoutError("slow"))
        self.round(MetaClientError("Status:500"))
        self.assertEqual((self.request.delay, self.request.retries, self.info.offset),
                         (1.0, 0, 100))

    def test_maxSizeGrowsForALargeMessage(self):
        """
        Data without a complete record counts retries; past
        C{maxIncreaseFetchDataRetries} (5) each such fetch doubles maxSize;
        the message then arrives with retries above C{maxFetchRetries} and
        is handed to local recovery, as the Java client does.
        """
        big = record(9, b"x" * 3000)
        sizes = []
        while self.request.maxSize < len(big):
            self.round(big[:self.request.maxSize])
            sizes.append(self.request.maxSize)
        self.assertEqual(sizes, [1024] * 6 + [2048, 4096])
        self.assertEqual(self.request.retries, 8)
        self.round(big)
        self.assertEqual(self.consumer.received, [])
        self.assertEqual([m.id for m in self.consumer.recovered], [9])
        self.assertEqual((self.info.offset, self.request.retries, self.request.delay),
                         (100 + len(big), 0, 0))

    def test_maxSizeShrinks(self):
        self.request.maxSize = 8192
        self.request.decreaseMaxSize()
        self.assertEqual(self.request.maxSize, 4096)
        self.request.maxSize = 512
        self.request.decreaseMaxSize()
        self.assertEqual(self.request.maxSize, 1024)
        self.request.decreaseMaxSize()
        self.assertEqual(self.request.maxSize, 1024)

    def test_listenerFailureRetriesThenRecovers(self):
        """
        A failing listener stops the round before its message; after more
        than C{maxFetchRetries} failed rounds the message goes to local
        recovery and the next ones are delivered.
        """
        data = record(1, b"bad") + record(2, b"good")
        self.consumer.failures = 6
        for n in range(6):
            self.round(data)
            self.assertEqual(self.info.offset, 100)
            self.assertEqual(self.request.retries, n + 1)
        self.assertEqual(self.request.delay, 3.0)
        self.round(data)
        self.assertEqual([m.id for m in self.consumer.recovered], [1])
        self.assertEqual(self.consumer.received, [])
        self.round(data[len(record(1, b"bad")):])
        self.assertEqual([m.id for m in self.consumer.received], [2])
        self.assertEqual(self.info.offset, 100 + len(data))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 6)

    def test_failureAfterSomeMessages(self):
        """
        Messages before a failing one are consumed; retries reset.
        """
        first = record(1, b"ok")
        self.consumer.onMessage = lambda m: setattr(self.consumer, "failures", 1)
        self.round(first + record(2, b"fails") + record(3, b"later"))
        self.assertEqual([m.id for m in self.consumer.received], [1])
        self.assertEqual((self.info.offset, self.request.retries), (100 + len(first), 0))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_duplicatesSkipped(self):
        """
        A message already processed by the group (an id in the cache) is
        skipped but consumed.
        """
        data = record(1, b"a") + record(2, b"b")
        self.round(data)
        self.info.offset = 100
        self.round(data + record(3, b"c"))
        self.assertEqual([m.id for m in self.consumer.received], [1, 2, 3])

    def test_filter(self):
        class Even:
            def accept(self, group, message):
                if message.id == 4:
                    raise ValueError("broken filter")
                return message.id % 2 == 0
        self.consumer.filter = Even()
        data = b"".join(record(i, b"m") for i in range(1, 6))
        self.round(data)
        self.assertEqual([m.id for m in self.consumer.received], [2])
        self.assertEqual(self.info.offset, 100 + len(data))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_rollbackOnly(self):
        first = record(1, b"a")
        self.consumer.onMessage = lambda m: m.id == 2 and m.setRollbackOnly()
        self.round(first + record(2, b"b") + record(3, b"c"))
        self.assertEqual(self.info.offset, 100 + len(first))

    def test_invalidChecksumAsksOffset(self):
        """
        A bad record: the messages before it are consumed, then the
        broker's offset is asked and fetching restarts there.
        """
        good = record(1, b"good")
        bad = bytearray(record(2, b"bad"))
        bad[-1] ^= 0xFF
        self.consumer.offsets.append(40)
        self.round(good + bytes(bad))
        self.assertEqual([m.id for m in self.consumer.received], [1])
        self.assertEqual((self.info.offset, self.info.messageId), (40, -1))

    def test_invalidRecordSkippedAfterRetries(self):
        """
        A broker that keeps serving the same bad record (one that does not
        verify its files): after C{maxInvalidMessageRetries} rounds that
        met it, the consumer moves past it by its length, logs it and
        counts it, and the messages after it are consumed.
        """
        good = record(1, b"good")
        bad = bytearray(record(2, b"bad"))
        bad[-1] ^= 0xFF
        after = record(3, b"after")
        data = good + bytes(bad) + after
        retries = self.consumer.config.maxInvalidMessageRetries
        for _ in range(retries):
            self.consumer.offsets.append(100)
            self.round(data)
            self.assertEqual(self.info.offset, 100)
        self.round(data)
        self.assertEqual(self.manager.invalidSkipped, 1)
        self.assertEqual(self.info.offset, 100 + len(good) + len(bad))
        self.round(after)
        self.assertEqual([m.id for m in self.consumer.received], [1, 3])

    def test_manualAck(self):
        """
        With auto-ack off, consumed messages only move a temporary offset;
        ack() commits everything so far, rollback() refetches from the
        last committed offset.
        """
        a, b, c = record(1, b"a"), record(2, b"b"), record(3, b"c")
        self.consumer.onMessage = lambda m: m.setAutoAck(False)
        self.round(a + b)
        self.assertEqual((self.info.offset, self.request.offset), (100, 100 + len(a + b)))
        self.consumer.onMessage = lambda m: m.rollback()
        self.round(c)
        self.assertEqual((self.info.offset, self.request.offset), (100, 100))
        self.consumer.onMessage = lambda m: m.id == 2 and m.ack()
        self.round(a + b + c)
        self.assertEqual([m.id for m in self.consumer.received], [1, 2, 3, 1, 2])
        self.assertEqual((self.info.offset, self.info.messageId, self.request.offset),
                         (100 + len(a + b), 2, 100 + len(a + b)))


class FakeConnection:
    connected = True

    def __init__(self, reply):
        self.reply = reply
        self.requests = []

    def request(self, method, *args, timeout):
        self.requests.append((method, args, timeout))
        return defer.succeed(self.reply)


class FakeConnections:
    def __init__(self, connection):
        self.connection = connection

    def acquire(self, url, ref):
        return self.connection


class ConsumerFetchTests(TestCase):
    """
    How L{MessageConsumer.fetch} reads each reply (docs/protocol.md).
    """

    def fetch(self, reply, maxSize=1024):
        connection = FakeConnection(reply)
        consumer = MessageConsumer(ConsumerConfig("g", serverUrl="meta://127.0.0.1:1"),
                                   FakeConnections(connection), reactor=Clock())
        self.request = FetchRequest("meta://127.0.0.1:1",
                                    PartitionOffset("t", Partition(0, 3), 25), maxSize)
        self.request.maxSize = maxSize * 4
        self.request.retries = 3
        d = defer.ensureDeferred(consumer.fetch(self.request))
        self.assertEqual(connection.requests, [("get", ("t", "g", 3, 25, maxSize * 4), 10.0)])
        return d

    def test_value(self):
        data = self.successResultOf(self.fetch(ValueCommand(b"x" * 1500, 1)))
        self.assertEqual(len(data), 1500)
        self.assertEqual(self.request.maxSize, 2048)

    def test_noData(self):
        for code in (403, 404):
            self.assertIsNone(self.successResultOf(self.fetch(ResultCommand(code, b"", 1))))
            self.assertEqual((self.request.info.offset, self.request.retries), (25, 3))

    def test_moved(self):
        self.assertIsNone(self.successResultOf(self.fetch(ResultCommand(301, b"339", 1))))
        self.assertEqual((self.request.info.offset, self.request.info.modified,
                          self.request.retries), (339, True, 0))

    def test_error(self):
        failure = self.failureResultOf(self.fetch(ResultCommand(500, b"boom", 1)), MetaClientError)
        self.assertEqual(str(failure.value), "Status:500,Error message:boom")


class ConsumerConfigTests(TestCase):
    def test_badGroups(self):
        for group in ("", " ", "a.b", "a b", "a/b", "a:b", "x*"):
            self.assertRaises(ValueError, ConsumerConfig, group)
        ConsumerConfig("grp-b_1")

    def test_badStrategy(self):
        self.assertRaises(ValueError, ConsumerConfig, "g", loadBalanceStrategyType="X")

    def test_consumeFromMaxOffset(self):
        config = ConsumerConfig("g")
        config.setConsumeFromMaxOffset()
        self.assertEqual((config.offset, config.alwaysConsumeFromMaxOffset), (2 ** 63 - 1, False))
        config.setConsumeFromMaxOffset(True)
        self.assertTrue(config.alwaysConsumeFromMaxOffset)


class MessageIdCacheTests(TestCase):
    def test_leastRecentlyUsedGoes(self):
        cache = MessageIdCache(capacity=3)
        for key in ("a", "b", "c"):
            cache.add(key)
        self.assertIn("a", cache)
        cache.add("d")
        self.assertNotIn("b", cache)
        cache.add("c")
        cache.add("e")
        self.assertEqual([k for k in "abcde" if k in cache], ["c", "d", "e"])


class FetchLoopPropertyTests(TestCase):
    """
    Whatever the fetch sizes and however often the listener fails on each
    message, every message ends up exactly once either delivered or in
    local recovery, in partition order, and the offset ends at the end.
    """

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.tuples(st.binary(max_size=40), st.integers(0, 9)), min_size=1, max_size=12),
           st.integers(70, 400))
    def test_exactlyOnceInOrder(self, messages, maxSize):
        stream = b"".join(record(i + 1, data) for i, (data, _) in enumerate(messages))
        failures = {i + 1: f for i, (_, f) in enumerate(messages)}
        outcome = []

        class Partition0(FakeConsumer):
            def receiveMessages(self, message):
                if failures[message.id]:
                    failures[message.id] -= 1
                    raise RuntimeError("failing")
                outcome.append(("delivered", message.id))

            async def fetch(self, request):
                data = stream[request.offset:request.offset + request.maxSize]
                return data or None

            def appendCouldNotProcess(self, message):
                outcome.append(("recovered", message.id))
                return defer.succeed(None)

        consumer = Partition0()
        manager = FetchManager(consumer, Clock(), MessageIdCache())
        manager.stopped = False
        info = PartitionOffset("t", Partition(0, 0), 0)
        request = FetchRequest("meta://127.0.0.1:1", info, maxSize)
        for _ in range(2000):
            if info.offset == len(stream):
                break
            self.successResultOf(defer.ensureDeferred(manager.processRequest(request)))
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(info.offset, len(stream))
        self.assertEqual([i for _, i in outcome], list(range(1, len(messages) + 1)))
        for kind, msgId in outcome:
            if messages[msgId - 1][1] <= 5:
                self.assertEqual(kind, "delivered")
            elif messages[msgId - 1][1] >= 7:
                self.assertEqual(kind, "recovered")
