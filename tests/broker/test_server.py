"""
Tests for L{metamorphosis.broker.server}: every request answered as the Java
broker answers it (docs/protocol.md), on in-memory transports.
"""

import errno
import os

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.trial import unittest

from metamorphosis import METAQ_VERSION
from metamorphosis.broker.access import AccessGate, parseAccess
from metamorphosis.broker.config import MetaConfig, TopicConfig, standaloneConfig
from metamorphosis.broker.server import (
    CHUNK_SIZE,
    REPLY_LATER,
    BrokerFactory,
    BrokerProcessor,
)
from metamorphosis.broker.stats import StatsManager
from metamorphosis.protocol.commands import ResultCommand
from metamorphosis.protocol.ids import IdWorker
from metamorphosis.protocol.records import checksum, decodeRecords, encodeRecord
from tests.broker.fakes import FakeStoreManager, FileStore

ERROR_PREFIX = b"Put message to [broker 'meta://127.0.0.1:8123'] "


def parseFrames(data):
    """
    Split broker output into C{(kind, code, opaque, body)} frames.
    """
    frames = []
    while data:
        line, data = data.split(b"\r\n", 1)
        tokens = line.split(b" ")
        if tokens[0] == b"result":
            code, length, opaque = int(tokens[1]), int(tokens[2]), int(tokens[3])
        else:
            code, length, opaque = None, int(tokens[1]), int(tokens[2])
        frames.append((tokens[0].decode(), code, opaque, data[:length]))
        data = data[length:]
    return frames


class ServerTestCase(unittest.TestCase):
    def setUp(self):
        self.config = MetaConfig(brokerId=0, hostName="127.0.0.1", updateConsumerOffsets=False)
        self.config.topics = {
            "meta-test": TopicConfig("meta-test"),
            "test": TopicConfig("test", numPartitions=2),
            "filtered": TopicConfig("filtered", filters={
                "even": "tests.broker.filters.EvenIds",
                "keep": "tests.broker.filters.DataStartsWithKeep",
                "broken": "tests.broker.filters.rejectAll",
            }),
        }
        directory = self.mktemp()
        os.makedirs(directory)
        self.stores = FakeStoreManager(self.config, directory)
        self.addCleanup(self.stores.closeAll)
        self.clock = Clock()
        self.stats = StatsManager(self.config, self.stores, clock=self.clock.seconds)
        self.processor = BrokerProcessor(self.config, self.stores, self.stats, IdWorker(0),
                                         "127.0.0.1")
        self.factory = BrokerFactory(self.processor, self.stats)

    def connect(self):
        proto = self.factory.buildProtocol(None)
        proto.callLater = self.clock.callLater
        transport = StringTransport()
        proto.makeConnection(transport)
        self.addCleanup(lambda: proto.connected and proto.connectionLost(None))
        return proto, transport

    def request(self, data, proto=None):
        if proto is None:
            proto, transport = self.connect()
        else:
            transport = proto.transport
        transport.clear()
        proto.dataReceived(data)
        return parseFrames(transport.value())

    def put(self, topic, partition, data, opaque=1, check=None):
        if check is None:
            check = checksum(data)
        return self.request(b"put %s %d %d 0 %d %d\r\n%s" % (
            topic.encode(), partition, len(data), check, opaque, data))


class PutTests(ServerTestCase):
    def test_put(self):
        [(kind, code, opaque, body)] = self.put("meta-test", 0, b"hello", opaque=-2147483648)
        self.assertEqual((kind, code, opaque), ("result", 200, -2147483648))
        msgId, partition, offset = body.split(b" ")
        self.assertEqual((partition, offset), (b"0", b"0"))
        [(_, _, _, body)] = self.put("meta-test", 0, b"again")
        self.assertEqual(body.split(b" ")[1:], [b"0", b"25"])
        self.assertNotEqual(body.split(b" ")[0], msgId)
        self.assertEqual(self.stats.cmdPut, 2)

    def test_putWithoutChecksum(self):
        frames = self.request(b"put meta-test 0 5 0 7\r\nhello")
        self.assertEqual(frames[0][1], 200)

    def test_randomPartition(self):
        seen = set()
        for i in range(30):
            [(_, code, _, body)] = self.put("test", -1, b"x")
            self.assertEqual(code, 200)
            seen.add(int(body.split(b" ")[1]))
        self.assertEqual(seen, {0, 1})

    def test_unknownTopic(self):
        [(_, code, _, body)] = self.put("no-such-topic", 0, b"hello", opaque=12)
        self.assertEqual(code, 500)
        self.assertEqual(body, ERROR_PREFIX + b"[partition 'no-such-topic-0'] failed."
                               b"Detail:The server do not accept topic no-such-topic")
        self.assertEqual(self.stats.putFailed, 1)

    def test_wrongPartition(self):
        [(_, code, _, body)] = self.put("meta-test", 9, b"hello")
        self.assertEqual((code, body), (500, ERROR_PREFIX + b"[partition 'meta-test-9'] failed."
                                             b"Detail:wrong partition 9"))

    def test_badChecksum(self):
        [(_, code, _, body)] = self.put("meta-test", 0, b"hello", check=123)
        self.assertEqual((code, body), (500, ERROR_PREFIX + b"[partition 'meta-test-0'] failed."
                         b"Detail:Checksum failure,message may be corrupted when transfering "
                         b"on networking."))
        # As in Java, the store was created before the checksum was checked.
        self.assertIsNotNone(self.stores.getStore("meta-test", 0))
        self.assertEqual(self.stores.getStore("meta-test", 0).messageCount, 0)

    def test_closedPartition(self):
        self.config.closedPartitions.add(("test", 1))
        [(_, code, _, body)] = self.put("test", 1, b"hello")
        self.assertEqual((code, body), (403, ERROR_PREFIX + b"[partition 'test-1'] failed."
                                             b"Detail:partition[0-1] has been closed"))
        [(_, code, _, body)] = self.request(b"get test g 1 0 100 3\r\n")
        self.assertEqual((code, body), (403, b"Partition[0-1] has been closed"))

    def test_appendFailure(self):
        """
        An append failing on a full disk is answered with a reply saying so;
        a flood of them logs one line per interval, without a traceback.
        """
        store = self.stores.getOrCreateStore("meta-test", 0)
        store.failure = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        with capturedLogs() as events:
            for i in range(100):
                [(_, code, _, body)] = self.put("meta-test", 0, b"hello")
        self.assertEqual((code, body), (500, ERROR_PREFIX + b"[partition 'meta-test-0'] failed."
                                             b"Detail:the broker's disk is full "
                                             b"(No space left on device)"))
        self.assertEqual(len(events), 1)
        self.assertNotIn("log_failure", events[0])
        self.assertIn("disk is full", formatEvent(events[0]))
        self.assertEqual(self.stats.putFailed, 100)

    def test_outOfDescriptors(self):
        """
        An append failing for want of file descriptors says so.
        """
        store = self.stores.getOrCreateStore("meta-test", 0)
        store.failure = OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        with capturedLogs():
            [(_, code, _, body)] = self.put("meta-test", 0, b"hello")
        self.assertEqual(code, 500)
        self.assertIn(b"Detail:the broker has no file descriptor left (Too many open files)",
                      body)

    def test_appendBug(self):
        """
        An append failing with anything but an I/O error is a bug: logged
        with its traceback.
        """
        store = self.stores.getOrCreateStore("meta-test", 0)
        store.failure = ZeroDivisionError()
        [(_, code, _, body)] = self.put("meta-test", 0, b"hello")
        self.assertEqual((code, body), (500, ERROR_PREFIX + b"[partition 'meta-test-0'] failed."))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_refusalsLogOncePerInterval(self):
        """
        Refused puts log one line per interval, with the count of the
        others, and no traceback.
        """
        self.processor.refusals.clock = self.clock
        with capturedLogs() as events:
            for i in range(50):
                self.put("no-such-topic", 0, b"hello")
            self.clock.advance(61)
            self.put("no-such-topic", 0, b"hello")
        self.assertEqual(len(events), 2)
        self.assertEqual(events[1]["suppressed"], 49)
        self.assertNotIn("log_failure", events[1])

    def test_unreadableMessage(self):
        """
        A put whose record (20-byte header and body) is larger than
        C{maxTransferSize} could never be returned by a get: it is refused
        with a 400 saying so, nothing is stored; one that just fits is
        stored.
        """
        self.config.maxTransferSize = 100
        [(_, code, _, body)] = self.put("meta-test", 0, b"x" * 81, opaque=3)
        self.assertEqual(code, 400)
        self.assertIn(b"message of 81 bytes is too large", body)
        self.assertIn(b"maxTransferSize (100)", body)
        self.assertIsNone(self.stores.getStore("meta-test", 0))
        proto, transport = self.connect()
        self.request(b"put meta-test 0 81 0 -1 TX:a:1 4\r\n" + b"x" * 81, proto)
        self.assertEqual(parseFrames(transport.value())[0][1], 400)
        [(_, code, _, body)] = self.put("meta-test", 0, b"x" * 80)
        self.assertEqual(code, 200)

    def test_registersTopicOnce(self):
        registered = []
        self.processor.registerTopic = registered.append
        self.put("meta-test", 0, b"a")
        self.put("meta-test", 0, b"b")
        self.put("test", 1, b"c")
        self.put("nope", 0, b"c")
        self.assertEqual(registered, ["meta-test", "test"])

    def test_standaloneAcceptsAnyTopic(self):
        self.config.acceptAnyTopic = True
        [(_, code, _, body)] = self.put("anything", 0, b"x")
        self.assertEqual(code, 200)


class Refusing:
    """
    A processor wrapped around the broker's, as replication or the fence
    wrap it: puts are its own, everything else passes through
    C{__getattr__}, and its class has no C{putThen}.
    """

    def __init__(self, processor):
        self.processor = processor

    def __getattr__(self, name):
        return getattr(self.processor, name)

    def processPut(self, command, session):
        return ResultCommand(500, b"refused by the wrapper", command.opaque)


class WrappedProcessorTests(ServerTestCase):
    def test_wrapperNotBypassed(self):
        """
        A wrapper without C{putThen} of its own answers the connection's
        puts (its C{__getattr__} would hand out the wrapped processor's
        C{putThen}, past it).
        """
        self.factory.processor = Refusing(self.processor)
        [(_, code, _, body)] = self.put("meta-test", 0, b"hello")
        self.assertEqual((code, body), (500, b"refused by the wrapper"))
        self.assertEqual(self.stats.cmdPut, 0)

    def test_putThenOfAnyProcessor(self):
        """
        A processor whose class has C{putThen} is called with the
        connection's callable, not through C{processPut}.
        """
        calls = []

        class Replier(Refusing):
            def putThen(self, command, session, replied):
                calls.append(command.opaque)
                replied(ResultCommand(200, b"later", command.opaque))
                return REPLY_LATER

        self.factory.processor = Replier(self.processor)
        [(_, code, opaque, body)] = self.put("meta-test", 0, b"hello", opaque=4)
        self.assertEqual((code, opaque, body, calls), (200, 4, b"later", [4]))


def _wire(*puts):
    """
    The bytes of C{puts}, each C{(topic, partition, data, opaque)} or with
    a fifth item, its checksum.
    """
    wire = b""
    for put in puts:
        topic, partition, data, opaque = put[:4]
        check = put[4] if len(put) > 4 else checksum(data)
        wire += b"put %s %d %d 0 %d %d\r\n%s" % (topic.encode(), partition, len(data), check, opaque,
                                                 data)
    return wire


class PutBatchTests(ServerTestCase):
    """
    The bulk path of the Java producer's puts (L{PutBatch}: the whole plain
    puts of one read): the same stores, replies, statistics and logs as
    the puts one by one, in one store entry per partition and one reply.
    """

    def outcome(self):
        """
        What the broker holds: each partition's bodies, the statistics.
        """
        stored = {}
        for topic, partition in [("meta-test", 0), ("test", 0), ("test", 1)]:
            store = self.stores.getStore(topic, partition)
            data = b"" if store is None else os.pread(store.fd, store.sizeInBytes, 0)
            stored[topic, partition] = [record.data for record in decodeRecords(data)[0]]
        return (stored, self.stats.cmdPut, self.stats.putFailed, dict(self.stats.putsByPartition),
                dict(self.stats.putBytesByTopic))

    @staticmethod
    def comparable(frames):
        """
        The replies by opaque, without their message ids (made of the
        clock).
        """
        comparable = []
        for kind, code, opaque, body in sorted(frames, key=lambda frame: frame[2]):
            if code == 200:
                body = body.split(b" ", 1)[1]
            comparable.append((kind, code, opaque, body))
        return comparable

    def assertSameAsOneByOne(self, *puts, prepare=lambda: None):
        """
        C{puts} sent in one read leave the broker as they do sent one read
        each to a new broker, with the same replies, and log the same
        events.

        @param prepare: called on each broker first.
        """
        wire = _wire(*puts)
        prepare()
        proto, transport = self.connect()
        with capturedLogs() as batchedLogs:
            proto.dataReceived(wire)
        batched = parseFrames(transport.value())
        outcome = self.outcome()
        self.setUp()
        prepare()
        proto, transport = self.connect()
        with capturedLogs() as singleLogs:
            for put in puts:
                proto.dataReceived(_wire(put))
        single = parseFrames(transport.value())
        self.assertEqual(self.comparable(batched), self.comparable(single))
        self.assertEqual(outcome, self.outcome())
        # The broker's checks log before the processor's in a batch.
        self.assertEqual(sorted(formatEvent(event) for event in batchedLogs),
                         sorted(formatEvent(event) for event in singleLogs))
        return self.comparable(batched)

    def test_onePerPartition(self):
        """
        The puts to each partition are stored in order as one append, each
        answered with its own offset, and the statistics count them all.
        """
        appends = []
        for topic, partition in [("meta-test", 0), ("test", 1)]:
            store = self.stores.getOrCreateStore(topic, partition)
            appendRecordsThen = store.appendRecordsThen

            def counted(buffer, count, stored, failed, appendRecordsThen=appendRecordsThen):
                appends.append(count)
                appendRecordsThen(buffer, count, stored, failed)

            self.patch(store, "appendRecordsThen", counted)
        replies = self.assertSameAsOneByOne(
            ("meta-test", 0, b"a", 1), ("test", 1, b"bb", 2), ("meta-test", 0, b"ccc", 3),
            ("meta-test", 0, b"d", 4), ("test", 1, b"e", 5))
        self.assertEqual(sorted(appends[:2]), [2, 3])
        self.assertEqual([(code, opaque, body.decode()) for _, code, opaque, body in replies], [
            (200, 1, "0 0"), (200, 2, "1 0"), (200, 3, "0 21"), (200, 4, "0 44"), (200, 5, "1 22")])
        self.assertEqual(self.stats.cmdPut, 5)

    def test_distinctIds(self):
        """
        Every put of a batch gets its own message id, the one stored in its
        record.
        """
        frames = self.request(_wire(*[("meta-test", 0, b"m%d" % (i,), i) for i in range(5)]))
        ids = [int(body.split(b" ")[0]) for _, _, _, body in frames]
        self.assertEqual(len(set(ids)), 5)
        store = self.stores.getStore("meta-test", 0)
        records = decodeRecords(os.pread(store.fd, store.sizeInBytes, 0))[0]
        self.assertEqual([record.id for record in records], ids)

    def test_badChecksumInTheMiddle(self):
        """
        A put whose body fails its checksum is refused as alone; those
        around it are stored.
        """
        replies = self.assertSameAsOneByOne(
            ("meta-test", 0, b"a", 1), ("meta-test", 0, b"b", 2, 5), ("meta-test", 0, b"c", 3))
        self.assertEqual([reply[1] for reply in replies], [200, 500, 200])
        self.assertIn(b"Checksum failure", replies[1][3])

    def test_closedPartitionInTheMiddle(self):
        replies = self.assertSameAsOneByOne(
            ("meta-test", 0, b"a", 1), ("test", 0, b"b", 2), ("meta-test", 0, b"c", 3),
            ("test", 1, b"d", 4),
            prepare=lambda: self.config.closedPartitions.add(("test", 0)))
        self.assertEqual([reply[1] for reply in replies], [200, 403, 200, 200])
        self.assertIn(b"has been closed", replies[1][3])

    def test_refusedTopicsInTheMiddle(self):
        """
        An illegal topic name is refused by the broker's check, before the
        processor; an unknown topic and a wrong partition by the processor;
        a message no get could return by its size.
        """
        def prepare():
            self.config.maxTransferSize = 100

        replies = self.assertSameAsOneByOne(
            ("meta-test", 0, b"a", 1), ("bad*topic", 0, b"b", 2), ("nope", 0, b"c", 3),
            ("meta-test", 7, b"d", 4), ("meta-test", 0, b"x" * 81, 5), ("meta-test", 0, b"e", 6),
            prepare=prepare)
        self.assertEqual([reply[1] for reply in replies], [200, 400, 500, 500, 400, 200])

    def test_accessRefusedInTheMiddle(self):
        """
        Under C{[access]} rules each put of a batch is checked, as alone: a
        topic the client may not publish to is refused, the others stored.
        """
        def prepare():
            rules = parseAccess([("publish.meta-*", "192.168.1.0/24")])
            self.factory.access = AccessGate(lambda: rules)

        replies = self.assertSameAsOneByOne(
            ("meta-test", 0, b"a", 1), ("test", 0, b"b", 2), ("meta-test", 0, b"c", 3),
            prepare=prepare)
        self.assertEqual([reply[1] for reply in replies], [200, 401, 200])

    def test_appendFailure(self):
        """
        A partition whose append fails fails each of its puts, as alone,
        with one log line; the other partitions store theirs.
        """
        def prepare():
            store = self.stores.getOrCreateStore("test", 1)
            store.failure = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        replies = self.assertSameAsOneByOne(
            ("test", 1, b"a", 1), ("meta-test", 0, b"b", 2), ("test", 1, b"c", 3),
            prepare=prepare)
        self.assertEqual([reply[1] for reply in replies], [500, 200, 500])
        self.assertIn(b"disk is full", replies[0][3])
        self.assertEqual(self.stats.putFailed, 2)

    def test_appendBug(self):
        """
        An append failing with anything but an I/O error is logged with its
        traceback once for the batch.
        """
        store = self.stores.getOrCreateStore("meta-test", 0)
        store.failure = ZeroDivisionError()
        frames = self.request(_wire(("meta-test", 0, b"a", 1), ("meta-test", 0, b"b", 2)))
        self.assertEqual([frame[1] for frame in frames], [500, 500])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_registersTopicOnce(self):
        registered = []
        self.processor.registerTopic = registered.append
        self.request(_wire(("meta-test", 0, b"a", 1), ("test", 1, b"b", 2), ("meta-test", 0, b"c", 3),
                           ("nope", 0, b"d", 4)))
        self.assertEqual(registered, ["meta-test", "test"])

    def test_wrapperTakesThemOneByOne(self):
        """
        A processor without C{putBatchThen} (a wrapper: replication, the
        fence) is handed a batch's puts one by one.
        """
        self.factory.processor = Refusing(self.processor)
        frames = self.request(_wire(("meta-test", 0, b"a", 1), ("meta-test", 0, b"b", 2)))
        self.assertEqual([(code, opaque, body) for _, code, opaque, body in frames],
                         [(500, 1, b"refused by the wrapper"), (500, 2, b"refused by the wrapper")])
        self.assertEqual(self.stats.cmdPut, 0)


class CountingPoller:
    """
    An idle poller that counts its pokes.
    """

    pokes = 0

    def poke(self):
        self.pokes += 1


class IdlePollTests(ServerTestCase):
    def test_pokedWhenNothingIsInFlight(self):
        """
        The idle poller is poked by a reply that leaves its connection
        waiting for nothing, not by one while other requests of the
        connection are still unanswered (docs/performance.md).
        """
        answers = []

        class Later(Refusing):
            def putThen(self, command, session, replied):
                answers.append(lambda: replied(ResultCommand(200, b"ok", command.opaque)))
                return REPLY_LATER

        poller = self.factory.idlePoller = CountingPoller()
        self.factory.processor = Later(self.processor)
        proto, transport = self.connect()
        for opaque in (1, 2):
            proto.dataReceived(b"put meta-test 0 1 0 %d\r\nx" % (opaque,))
        self.assertEqual((len(answers), poller.pokes), (2, 0))
        answers[0]()
        self.assertEqual(poller.pokes, 0)
        answers[1]()
        self.assertEqual(poller.pokes, 1)
        self.assertEqual([frame[2] for frame in parseFrames(transport.value())], [1, 2])


class KeepDiskAwakeTests(ServerTestCase):
    def test_beforeEachRead(self):
        """
        Each read asks the group commit fsyncs to keep the disk awake
        before its puts are parsed and written.
        """
        calls = []
        self.factory.keepDiskAwake = lambda: calls.append(self.stats.cmdPut)
        proto, transport = self.connect()
        proto.dataReceived(_wire(("meta-test", 0, b"a", 1), ("meta-test", 0, b"b", 2)))
        proto.dataReceived(b"version 3\r\n")
        self.assertEqual(calls, [0, 2])


class GetTests(ServerTestCase):
    def fill(self, *payloads, topic="meta-test"):
        for payload in payloads:
            self.assertEqual(self.put(topic, 0, payload)[0][1], 200)
        return self.stores.getStore(topic, 0)

    def test_value(self):
        self.fill(b"hello", b"world")
        [(kind, _, opaque, body)] = self.request(b"get meta-test g 0 0 1048576 -5\r\n")
        self.assertEqual((kind, opaque), ("value", -5))
        records, consumed = decodeRecords(body)
        self.assertEqual([r.data for r in records], [b"hello", b"world"])
        self.assertEqual(consumed, 50)

    def test_partialValue(self):
        self.fill(b"hello", b"world")
        [(kind, _, _, body)] = self.request(b"get meta-test g 0 0 30 1\r\n")
        self.assertEqual((kind, len(body)), ("value", 30))

    def test_maxTransferSize(self):
        self.config.maxTransferSize = 26
        self.fill(b"hello", b"world")
        [(kind, _, _, body)] = self.request(b"get meta-test g 0 25 1000 1\r\n")
        self.assertEqual(len(body), 25)

    def test_notExists(self):
        [(_, code, _, body)] = self.request(b"get no-such-topic grp-r 0 0 1024 15\r\n")
        self.assertEqual((code, body),
                         (404, b"The topic `no-such-topic` in partition `0` is not exists"))
        self.assertEqual(self.stats.getMiss, 1)

    def test_badMaxSize(self):
        self.fill(b"x")
        [(_, code, _, body)] = self.request(b"get meta-test grp-r 0 0 0 14\r\n")
        self.assertEqual((code, body), (400, b"Bad request,invalid max size:0"))

    def test_caughtUp(self):
        self.fill(b"hello")
        [(_, code, _, body)] = self.request(b"get meta-test g 0 25 100 1\r\n")
        self.assertEqual((code, body), (404, b"Could not find message at position 25"))
        [(_, code, _, body)] = self.request(b"get meta-test g 0 999 100 1\r\n")
        self.assertEqual((code, body), (404, b"Could not find message at position 999"))

    def test_beyondEndMoves(self):
        self.config.updateConsumerOffsets = True
        self.fill(b"hello")
        [(_, code, _, body)] = self.request(b"get meta-test g 0 999999 1024 16\r\n")
        self.assertEqual((code, body), (301, b"25"))
        # At the end exactly: still "no data".
        [(_, code, _, _)] = self.request(b"get meta-test g 0 25 1024 16\r\n")
        self.assertEqual(code, 404)
        self.assertEqual(self.stats.cmdOffset, 1)

    def test_longMaxMoves(self):
        self.fill(b"hello")
        [(_, code, _, body)] = self.request(b"get meta-test g 0 9223372036854775807 10 1\r\n")
        self.assertEqual((code, body), (301, b"25"))

    def test_beforeStart(self):
        self.stores.add("meta-test", 0, FileStore(self.mktemp(), minOffset=1000))
        [(_, code, _, body)] = self.request(b"get meta-test g 0 10 100 1\r\n")
        self.assertEqual((code, body), (301, b"1000"))

    def test_storeError(self):
        store = self.fill(b"x")
        store.slice = lambda offset, size: 1 / 0
        [(_, code, _, body)] = self.request(b"get meta-test g 0 0 100 1\r\n")
        self.assertEqual(code, 500)
        self.assertEqual(body, ERROR_PREFIX + b"[partition 'meta-test-0'] failed."
                               b"Detail:division by zero")
        self.flushLoggedErrors(ZeroDivisionError)

    def test_largeValueStreamed(self):
        """
        A slice larger than a chunk is written in several pieces, never as
        one copy of the whole slice.
        """
        self.config.maxTransferSize = 4 * CHUNK_SIZE
        payload = os.urandom(3 * CHUNK_SIZE)
        self.fill(payload)
        proto, transport = self.connect()
        writes = []
        original = transport.write
        transport.write = lambda data: (writes.append(len(data)), original(data))
        proto.dataReceived(b"get meta-test g 0 0 %d 1\r\n" % (4 * CHUNK_SIZE,))
        self.assertLessEqual(max(writes), CHUNK_SIZE)
        [(_, _, _, body)] = parseFrames(transport.value())
        self.assertEqual(decodeRecords(body)[0][0].data, payload)


class FilterTests(ServerTestCase):
    def fill(self):
        store = self.stores.getOrCreateStore("filtered", 0)
        for msgId, data in [(2, b"keep 1"), (3, b"drop"), (4, b"keep 2"), (5, b"boom")]:
            store.append(msgId, 0, data)
        return store

    def test_filtered(self):
        self.fill()
        [(kind, _, _, body)] = self.request(b"get filtered even 0 0 1000 1\r\n")
        self.assertEqual(kind, "value")
        self.assertEqual(body, encodeRecord(2, 0, b"keep 1") + encodeRecord(4, 0, b"keep 2"))

    def test_filterExceptionRejects(self):
        self.fill()
        [(_, _, _, body)] = self.request(b"get filtered keep 0 0 1000 1\r\n")
        self.assertEqual([r.data for r in decodeRecords(body)[0]], [b"keep 1", b"keep 2"])
        self.flushLoggedErrors(RuntimeError)

    def test_allRejectedMoves(self):
        self.fill()
        # From the "drop" record (offset 26) with room for it and half of
        # the next: only "drop" is complete, and it is rejected.
        [(_, code, _, body)] = self.request(b"get filtered even 0 26 35 1\r\n")
        self.assertEqual((code, body), (301, b"50"))

    def test_unfilteredGroup(self):
        self.fill()
        [(_, _, _, body)] = self.request(b"get filtered other 0 0 1000 1\r\n")
        self.assertEqual(len(decodeRecords(body)[0]), 4)

    def test_filterNotProvidingInterface(self):
        self.fill()
        [(_, code, _, body)] = self.request(b"get filtered broken 0 0 1000 1\r\n")
        self.assertEqual(code, 500)
        self.assertIn(b"does not provide IMessageFilter", body)
        self.flushLoggedErrors(TypeError)


class OtherCommandTests(ServerTestCase):
    def test_offset(self):
        [(_, code, _, body)] = self.request(b"offset meta-test g 0 0 9\r\n")
        self.assertEqual((code, body), (404, b"The topic `meta-test` in partition `0` is not exists"))
        self.put("meta-test", 0, b"hello")
        [(_, code, opaque, body)] = self.request(b"offset meta-test g 0 10 9\r\n")
        self.assertEqual((code, opaque, body), (200, 9, b"0"))
        [(_, code, _, body)] = self.request(b"offset meta-test g 0 100 9\r\n")
        self.assertEqual(body, b"25")
        self.assertEqual(self.stats.cmdOffset, 3)

    def test_version(self):
        self.assertEqual(self.request(b"version\r\n"),
                         [("result", 200, 2147483647, METAQ_VERSION.encode())])
        self.assertEqual(self.request(b"vxyz 12\r\n")[0][2], 12)

    def test_stats(self):
        [(_, code, opaque, body)] = self.request(b"stats\r\n")
        self.assertEqual((code, opaque), (200, 2147483647))
        self.assertTrue(body.startswith(b"STATS\r\npid "))
        self.assertIn(b"\r\ncurr_connections 1\r\n", body)
        [(_, _, opaque, body)] = self.request(b"stats help 5\r\n")
        self.assertEqual(opaque, 5)
        self.assertIn(b"help Returns help menu.", body)

    def test_statsConfig(self):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"[system]\r\n\xb2\xe2\xca\xd4\n")
        self.config.path = path
        self.assertEqual(self.request(b"stats config 4\r\n"),
                         [("result", 200, 4, b"[system]\r\n\xb2\xe2\xca\xd4\n")])
        os.remove(path)
        self.assertEqual(self.request(b"stats config 4\r\n"),
                         [("result", 500, 4, b"Config file not found:" + path.encode())])

    def test_statsConfigStandalone(self):
        self.processor.config = standaloneConfig()
        self.assertEqual(self.request(b"stats config 4\r\n"),
                         [("result", 500, 4, b"Config file not found:null")])

    def test_sync(self):
        frames = self.request(b"sync meta-test 0 5 0 -5468572396564774912 907060870 19\r\nhello")
        self.assertEqual(frames, [("result", 503, 19, (
            b"\xe6\x9c\xaa\xe6\xb3\xa8\xe5\x86\x8c\xe8\xaf\xb7\xe6\xb1\x82\xe5\xa4\x84\xe7\x90"
            b"\x86\xe5\x99\xa8\xef\xbc\x8c\xe8\xaf\xb7\xe6\xb1\x82\xe5\xa4\x84\xe7\x90\x86\xe5"
            b"\x99\xa8\xe7\xb1\xbb\xe4\xb8\xbacom.taobao.metamorphosis.network.SyncCommand"))])

    def test_transactionWithoutProcessor(self):
        proto, transport = self.connect()
        self.assertEqual(self.request(b"transaction TX:s:1 s END 3\r\n", proto), [])
        self.assertEqual(self.request(b"transaction null s RECOVER q 4\r\n", proto),
                         [("result", 200, 4, b"")])
        self.assertEqual(self.request(b"transaction TX:s:1 s COMMIT_ONE_PHASE 5\r\n", proto),
                         [("result", 500, 5, b"Local transaction 'TX:s:1' has not been started.")])
        frames = self.request(b"put meta-test 0 5 0 907060870 TX:s:1 6\r\nhello", proto)
        self.assertEqual(frames,
                         [("result", 500, 6, b"Local transaction 'TX:s:1' has not been started.")])

    def test_quit(self):
        proto, transport = self.connect()
        proto.dataReceived(b"quit\r\n")
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnecting)

    def test_responseIgnored(self):
        proto, transport = self.connect()
        proto.dataReceived(b"result 200 0 1\r\nversion 3\r\n")
        self.assertEqual(parseFrames(transport.value()), [("result", 200, 3, b"1.4.6.2")])

    def test_malformed(self):
        proto, transport = self.connect()
        proto.dataReceived(b"version 1\r\nhello world\r\nversion 2\r\n")
        frames = parseFrames(transport.value())
        self.assertEqual(frames[0], ("result", 200, 1, b"1.4.6.2"))
        self.assertEqual([(k, c) for k, c, _, _ in frames[1:]], [("result", 400)])
        self.assertTrue(transport.disconnecting)

    def test_connectionCount(self):
        proto, _ = self.connect()
        self.connect()
        self.assertEqual(self.stats.connections, 2)
        proto.connectionLost(None)
        self.assertEqual(self.stats.connections, 1)


class FlowTests(ServerTestCase):
    def test_repliesOfOneReadInOneWrite(self):
        """
        The requests of one read are all handled before any reply goes
        out, and the replies ready then leave in one write.
        """
        proto, transport = self.connect()
        writes = []
        realWrite = transport.write
        transport.write = lambda data: (writes.append(data), realWrite(data))
        proto.dataReceived(b"".join(
            b"put meta-test 0 1 0 -1 %d\r\nx" % (opaque,) for opaque in (1, 2, 3))
            + b"version 4\r\n")
        self.assertEqual(len(writes), 1)
        frames = parseFrames(writes[0])
        self.assertEqual(sorted((f[1], f[2]) for f in frames),
                         [(200, 1), (200, 2), (200, 3), (200, 4)])

    def test_pipelinedRepliesByCompletion(self):
        """
        Replies go out as the requests complete: a put whose append is not
        acknowledged yet does not hold back the get behind it.
        """
        self.put("meta-test", 0, b"hello")
        self.stores.getStore("meta-test", 0).hold = True
        proto, transport = self.connect()
        proto.dataReceived(b"put meta-test 0 1 0 1\r\nxget meta-test g 0 0 100 2\r\nversion 3\r\n")
        self.assertEqual([f[2] for f in parseFrames(transport.value())], [2, 3])
        transport.clear()
        self.stores.getStore("meta-test", 0).release()
        self.assertEqual([f[2] for f in parseFrames(transport.value())], [1])

    def test_backPressure(self):
        """
        While the transport asks its producer to pause, the connection stops
        reading, queues the decoded commands and writes nothing more.
        """
        self.config.maxTransferSize = 4 * CHUNK_SIZE
        self.put("meta-test", 0, os.urandom(3 * CHUNK_SIZE))
        proto, transport = self.connect()
        transport.write = self._pausingWrite(transport, proto)
        proto.dataReceived(b"".join(b"get meta-test g 0 0 %d %d\r\n" % (4 * CHUNK_SIZE, i)
                                    for i in range(5)))
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(self.written, [b"value %d 0\r\n" % (3 * CHUNK_SIZE + 20,)])
        self.assertEqual(self.stats.cmdGet, 1)
        total = 0
        while proto._output or proto._commands:
            proto.resumeProducing()
            total += 1
            self.assertLessEqual(len(self.written[-1]), CHUNK_SIZE)
        self.assertEqual(self.stats.cmdGet, 5)
        frames = parseFrames(b"".join(self.written))
        self.assertEqual([f[2] for f in frames], [0, 1, 2, 3, 4])
        self.assertEqual(transport.producerState, "producing")

    def _pausingWrite(self, transport, proto):
        self.written = []

        def write(data):
            self.written.append(data)
            proto.pauseProducing()

        return write

    def test_idleTimeout(self):
        proto, transport = self.connect()
        self.clock.advance(299)
        proto.dataReceived(b"version 1\r\n")
        self.clock.advance(299)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(2)
        self.assertTrue(transport.disconnecting)


class ClosingTests(ServerTestCase):
    def test_quitAfterPendingPut(self):
        """
        C{quit} closes the connection once the requests before it are
        answered; requests after it are ignored.
        """
        self.put("meta-test", 0, b"hello")
        self.stores.getStore("meta-test", 0).hold = True
        proto, transport = self.connect()
        proto.dataReceived(b"put meta-test 0 1 0 1\r\nxquit\r\nversion 3\r\n")
        self.assertFalse(transport.disconnecting)
        self.stores.getStore("meta-test", 0).release()
        self.assertEqual([f[2] for f in parseFrames(transport.value())], [1])
        self.assertTrue(transport.disconnecting)

    def test_halfCloseAnswersQueued(self):
        """
        A client that half-closes after pipelining requests still gets every
        reply, including those held back by flow control.
        """
        proto, transport = self.connect()
        proto.pauseProducing()
        proto.dataReceived(b"version 1\r\nversion 2\r\n")
        proto.readConnectionLost()
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnecting)
        proto.resumeProducing()
        self.assertEqual([f[2] for f in parseFrames(transport.value())], [1, 2])
        self.assertTrue(transport.disconnecting)

    def test_halfCloseWithinCommand(self):
        proto, transport = self.connect()
        proto.dataReceived(b"put meta-test 0 10 0 5\r\nabc")
        proto.readConnectionLost()
        [(kind, code, opaque, body)] = parseFrames(transport.value())
        self.assertEqual((code, opaque), (400, 5))
        self.assertTrue(transport.disconnecting)


class FramingLimitTests(ServerTestCase):
    """
    C{maxRequestBodySize} and C{maxRequestLineLength} bound what one
    request may declare; past either the request is refused from its header
    alone, before its body is read.
    """

    def test_bodyRefusedFromItsHeader(self):
        """
        A put declaring a body longer than C{maxRequestBodySize} gets a 400
        naming both sizes as soon as its header line is in, and the
        connection closes; no store is even opened.
        """
        self.config.maxRequestBodySize = 2048
        proto, transport = self.connect()
        proto.dataReceived(b"put meta-test 0 2049 0 0 7\r\n")
        [(kind, code, opaque, body)] = parseFrames(transport.value())
        self.assertEqual((code, opaque), (400, 7))
        self.assertIn(b"2049", body)
        self.assertIn(b"2048", body)
        self.assertTrue(transport.disconnecting)
        self.assertIsNone(self.stores.getStore("meta-test", 0))

    def test_bodyAtTheLimit(self):
        """
        A body of exactly C{maxRequestBodySize} bytes is taken.
        """
        self.config.maxRequestBodySize = 2048
        [(kind, code, opaque, body)] = self.put("meta-test", 0, b"x" * 2048)
        self.assertEqual(code, 200)

    def test_lineTooLong(self):
        """
        A header line longer than C{maxRequestLineLength} is refused before
        its end arrives.
        """
        self.config.maxRequestLineLength = 100
        proto, transport = self.connect()
        proto.dataReceived(b"version " + b"1" * 200)
        [(kind, code, opaque, body)] = parseFrames(transport.value())
        self.assertEqual(code, 400)
        self.assertTrue(transport.disconnecting)


class TopicNameTests(ServerTestCase):
    """
    An illegal topic name is answered with a 400 naming the problem before
    any processor, store or file sees it.
    """

    ILLEGAL = ["../x", "/tmp/abs", "./meta-test", "../data/meta-test", "a\x00b", "x" * 300,
               "..", "app/../../esc"]

    def setUp(self):
        ServerTestCase.setUp(self)
        self.config.acceptAnyTopic = True

    def assertRefused(self, frames, topic):
        [(kind, code, opaque, body)] = frames
        self.assertEqual((kind, code), ("result", 400), body)
        self.assertIn(b"Illegal topic name", body)
        self.assertIn(repr(topic).encode(), body)

    def test_put(self):
        for topic in self.ILLEGAL:
            self.assertRefused(self.put(topic, 0, b"hello"), topic)
        self.assertEqual(self.stores.stores(), [])
        self.assertEqual(os.listdir(self.stores.directory), [])

    def test_otherCommands(self):
        """
        get, offset, sync and transactional puts are checked too; the
        connection stays usable.
        """
        proto, transport = self.connect()
        for topic in self.ILLEGAL:
            name = topic.encode()
            for request in (b"get %s g 0 0 100 7\r\n" % name,
                            b"offset %s g 0 0 7\r\n" % name,
                            b"sync %s 0 5 0 1 7 -1\r\nhello" % name,
                            b"put %s 0 5 0 TX:abc:1 7\r\nhello" % name):
                self.assertRefused(self.request(request, proto), topic)
        self.assertEqual(self.request(b"version 8\r\n", proto)[0][1], 200)
        self.assertEqual(self.stores.stores(), [])

    def test_legalNames(self):
        for topic in ("meta-test", "com.example.orders", "a" * 249):
            [(_, code, _, _)] = self.put(topic, 0, b"x")
            self.assertEqual(code, 200)

    def test_configuredLength(self):
        self.config.maxTopicNameLength = 8
        self.assertRefused(self.put("abcdefghi", 0, b"hello"), "abcdefghi")
        self.assertEqual(self.put("abcdefgh", 0, b"x")[0][1], 200)

    def test_loggedOncePerInterval(self):
        with capturedLogs() as events:
            for i in range(20):
                self.put("../x", 0, b"hello")
        self.assertEqual(len(events), 1)
        self.assertNotIn("log_failure", events[0])


class UnfinishedRequestTests(ServerTestCase):
    """
    The memory and time a request may take while it is being received.
    """

    def putHeader(self, length, opaque):
        return b"put meta-test 0 %d 0 -1 %d\r\n" % (length, opaque)

    def test_slowRequestClosed(self):
        """
        A request not complete C{maxRequestSeconds} after its first byte is
        answered 400 and the connection closed, however often bytes arrive.
        """
        self.factory.requestDeadline = 10
        proto, transport = self.connect()
        proto.dataReceived(self.putHeader(100, 5) + b"x")
        for i in range(9):
            self.clock.advance(1)
            proto.dataReceived(b"x")
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.factory.unfinishedBytes, 10)
        self.clock.advance(1)
        [(kind, code, opaque, body)] = parseFrames(transport.value())
        self.assertEqual((kind, code, opaque), ("result", 400, 5))
        self.assertIn(b"not complete within 10 s", body)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.factory.unfinishedBytes, 0)
        self.assertEqual(self.stores.stores(), [])

    def test_fastPipelineNeverClosed(self):
        """
        A client streaming requests back to back, its buffer never empty,
        is not affected: each request's clock starts with its own first
        byte.
        """
        self.factory.requestDeadline = 10
        proto, transport = self.connect()
        stream = b"".join(self.putHeader(5, i) + b"hello" for i in range(200))
        for start in range(0, len(stream), 37):
            proto.dataReceived(stream[start:start + 37])
            self.clock.advance(1)
        self.assertFalse(transport.disconnecting)
        frames = parseFrames(transport.value())
        self.assertEqual([code for _, code, _, _ in frames], [200] * 200)
        self.assertEqual(self.factory.unfinishedBytes, 0)

    def test_pausedReadingNotCounted(self):
        """
        While the broker does not read (its client does not read replies)
        the request's clock is stopped.
        """
        self.factory.requestDeadline = 10
        proto, transport = self.connect()
        proto.dataReceived(self.putHeader(100, 5) + b"x")
        proto.pauseProducing()
        self.clock.advance(100)
        self.assertFalse(transport.disconnecting)
        proto.resumeProducing()
        proto.dataReceived(b"x" * 99)
        self.clock.advance(100)
        self.assertEqual(parseFrames(transport.value())[0][1], 200)

    def test_globalBound(self):
        """
        Past C{maxUnfinishedRequestBytes} over all connections, the
        connection whose request would go beyond it is answered 503 and
        closed, its bytes freed; the others go on.
        """
        self.factory.maxUnfinishedBytes = 1000
        first, firstTransport = self.connect()
        second, secondTransport = self.connect()
        first.dataReceived(self.putHeader(800, 1) + b"a" * 600)
        second.dataReceived(self.putHeader(800, 2) + b"b" * 500)
        [(kind, code, opaque, body)] = parseFrames(secondTransport.value())
        self.assertEqual((code, opaque), (503, 2))
        self.assertIn(b"maxUnfinishedRequestBytes", body)
        self.assertTrue(secondTransport.disconnecting)
        self.assertFalse(firstTransport.disconnecting)
        self.assertEqual(self.factory.unfinishedBytes, 600)
        first.dataReceived(b"a" * 200)
        self.assertEqual(parseFrames(firstTransport.value())[0][1], 200)
        self.assertEqual(self.factory.unfinishedBytes, 0)
        third, thirdTransport = self.connect()
        third.dataReceived(self.putHeader(800, 3) + b"c" * 800)
        self.assertEqual(parseFrames(thirdTransport.value())[0][1], 200)

    def test_lostConnectionFreesItsBytes(self):
        proto, transport = self.connect()
        proto.dataReceived(self.putHeader(800, 1) + b"a" * 600)
        self.assertEqual(self.factory.unfinishedBytes, 600)
        proto.connectionLost(None)
        self.assertEqual(self.factory.unfinishedBytes, 0)


class DrainTests(ServerTestCase):
    """
    Stopping: read nothing more, answer what was received, then close.
    """

    def test_pendingPutAnswered(self):
        """
        A put being stored when the broker stops gets its reply before the
        connection closes; a command only partly received is dropped.
        """
        store = self.stores.getOrCreateStore("meta-test", 0)
        store.hold = True
        proto, transport = self.connect()
        proto.dataReceived(b"put meta-test 0 5 0 -1 1\r\nhello"
                           b"put meta-test 0 5 0 -1 2\r\nhel")
        drained = self.factory.drain(10, self.clock)
        self.assertNoResult(drained)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.factory.unfinishedBytes, 0)
        proto.dataReceived(b"lo")
        store.release()
        [(kind, code, opaque, body)] = parseFrames(transport.value())
        self.assertEqual((code, opaque), (200, 1))
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(None)
        self.successResultOf(drained)
        self.assertEqual(store.messageCount, 1)

    def test_queuedCommandsAnswered(self):
        """
        Commands decoded while the client was not reading are answered
        once it reads again.
        """
        proto, transport = self.connect()
        proto.pauseProducing()
        proto.dataReceived(b"version 1\r\nversion 2\r\n")
        drained = self.factory.drain(10, self.clock)
        proto.resumeProducing()
        self.assertEqual([opaque for _, _, opaque, _ in parseFrames(transport.value())],
                         [1, 2])
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(None)
        self.successResultOf(drained)

    def test_timeout(self):
        """
        Connections whose replies are not out after the timeout are
        aborted.
        """
        store = self.stores.getOrCreateStore("meta-test", 0)
        store.hold = True
        proto, transport = self.connect()
        proto.dataReceived(b"put meta-test 0 5 0 -1 1\r\nhello")
        aborted = []
        transport.abortConnection = lambda: aborted.append(proto)
        drained = self.factory.drain(10, self.clock)
        with capturedLogs():
            self.clock.advance(10)
        self.assertEqual(aborted, [proto])
        proto.connectionLost(None)
        self.successResultOf(drained)

    def test_noConnections(self):
        self.successResultOf(self.factory.drain(10, self.clock))
