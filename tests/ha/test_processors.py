"""
Tests for the request handling of the replication modes, on the broker's
real processor with in-memory stores: the gregor slave's C{sync}
(docs/protocol.md) and the samsa master's puts (docs/ha.md), with a link to the slave the test answers by hand.
"""

import os

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.trial import unittest

from metamorphosis.broker.access import AccessGate, parseAccess
from metamorphosis.broker.config import MetaConfig, TopicConfig
from metamorphosis.broker.idlepoll import SYNC_REPLICATION_MICROS, IdlePoller
from metamorphosis.broker.server import (
    CHECKSUM_FAILURE,
    REPLY_LATER,
    BrokerFactory,
    BrokerProcessor,
    Replies,
    Session,
    putBatchThenOf,
)
from metamorphosis.broker.stats import StatsManager
from metamorphosis.ha.config import SLAVE_STATUS_TOPIC, GregorSlaveConfig, SamsaMasterConfig
from metamorphosis.ha.failover import FencedProcessor
from metamorphosis.ha.gregor import GregorReplication
from metamorphosis.ha.link import NotConnected, RequestTimeout
from metamorphosis.ha.samsa import SamsaReplication
from metamorphosis.protocol.commands import (
    CommandParser,
    PutBatch,
    PutCommand,
    ResultCommand,
    SyncBatch,
    SyncCommand,
    TransactionCommand,
    VersionCommand,
)
from metamorphosis.protocol.ids import IdWorker
from metamorphosis.protocol.records import checksum, decodeRecords
from tests.broker.fakes import FakeStoreManager

BROKER = "meta://127.0.0.1:8131"


class _ProcessorCase(unittest.TestCase):
    def setUp(self):
        self.makeBroker()

    def makeBroker(self):
        """
        A broker's processor and factory on in-memory stores, as this
        test's attributes.
        """
        self.config = MetaConfig(brokerId=1, hostName="127.0.0.1", serverPort=8131)
        self.config.topics = {"meta-test": TopicConfig("meta-test"), "test": TopicConfig("test", numPartitions=2)}
        directory = self.mktemp()
        os.makedirs(directory)
        self.stores = FakeStoreManager(self.config, directory)
        self.addCleanup(self.stores.closeAll)
        self.stats = StatsManager(self.config, self.stores)
        self.stats.port = 8131
        self.processor = BrokerProcessor(self.config, self.stores, self.stats, IdWorker(1), "127.0.0.1")
        self.factory = BrokerFactory(self.processor, self.stats)

    def answeredAtOnce(self, batch, session=None):
        """
        The replies to C{batch} (a L{SyncBatch}, a L{PutBatch}) dispatched,
        decoded; the batch is answered once, with one L{Replies}, by the
        time the test looks.
        """
        replies = []
        reply = self.factory.dispatch(batch, session, replies.append)
        if reply is not REPLY_LATER:
            replies.append(reply)
        [reply] = replies
        self.assertIsInstance(reply, Replies)
        return CommandParser().feed(reply.encode())

    def stored(self, topic="meta-test", partition=0):
        store = self.stores.getStore(topic, partition)
        if store is None:
            return []
        return decodeRecords(os.pread(store.fd, store.sizeInBytes, 0))[0]


class GregorTests(_ProcessorCase):
    def setUp(self):
        _ProcessorCase.setUp(self)
        self.replication = GregorReplication(GregorSlaveConfig())
        self.replication.configure(self.config)
        self.replication.install(self.factory)

    #: Whether syncs are dispatched as the broker's connections do (with
    #: a callable for the reply: L{SyncProcessor.syncThen}), rather than
    #: through C{processSync} and a Deferred.
    replyLater = False

    def sync(self, topic="meta-test", partition=0, data=b"msg", msgId=-5468919651033411584, opaque=9, crc=None):
        command = SyncCommand(topic, partition, data, 0, msgId, opaque, checksum(data) if crc is None else crc)
        if not self.replyLater:
            return defer.maybeDeferred(self.factory.dispatch, command, None)
        d = defer.Deferred()
        reply = self.factory.dispatch(command, None, d.callback)
        if reply is not REPLY_LATER:
            d.callback(reply)
        return d

    def test_configure(self):
        """
        The slave adds the probe topic and stays out of ZooKeeper.
        """
        self.assertEqual(self.config.numPartitionsOf(SLAVE_STATUS_TOPIC), 1)
        self.assertTrue(self.config.isLegalTopic(SLAVE_STATUS_TOPIC))
        self.assertFalse(self.config.zookeeper.zkEnable)

    def test_configurePolls(self):
        """
        A slave whose server.ini does not set C{idlePollMicros} polls for
        L{SYNC_REPLICATION_MICROS}; one that sets it, 0 included, keeps it.
        """
        self.assertEqual(self.config.idlePollMicros, SYNC_REPLICATION_MICROS)
        for micros in (0, 250):
            config = MetaConfig(idlePollMicros=micros)
            GregorReplication(GregorSlaveConfig()).configure(config)
            self.assertEqual(config.idlePollMicros, micros)

    def test_storedWithMasterId(self):
        first = self.successResultOf(self.sync(data=b"a" * 24))
        second = self.successResultOf(self.sync(data=b"b", msgId=42, opaque=10, crc=-1))
        self.assertEqual(first, ResultCommand(200, b"-5468919651033411584 0 0", 9))
        self.assertEqual(second, ResultCommand(200, b"42 0 44", 10))
        self.assertEqual([(r.id, r.body) for r in self.stored()], [(-5468919651033411584, b"a" * 24), (42, b"b")])
        self.assertEqual(self.stats.cmdPut, 2)

    def test_checksum(self):
        reply = self.successResultOf(self.sync(crc=5))
        self.assertEqual(reply.code, 500)
        self.assertEqual(
            reply.message,
            "Put message to [broker '%s'] [partition 'meta-test-0'] failed.Detail:Checksum failure,"
            "message may be corrupted when transfering on networking." % (BROKER,),
        )
        self.assertEqual(self.stored(), [])

    def test_wrongPartitionAndTopic(self):
        self.assertEqual(
            self.successResultOf(self.sync(partition=-1)).message,
            "Put message to [broker '%s'] [partition 'meta-test--1'] failed.Detail:wrong partition -1" % (BROKER,),
        )
        self.assertEqual(
            self.successResultOf(self.sync(topic="nope")).message,
            "Put message to [broker '%s'] [partition 'nope-0'] failed.Detail:The server do not accept topic nope"
            % (BROKER,),
        )
        self.assertEqual(self.stats.putFailed, 2)

    def test_closedPartition(self):
        self.config.closedPartitions.add(("meta-test", 0))
        reply = self.successResultOf(self.sync())
        self.assertEqual(reply.code, 403)
        self.assertEqual(
            reply.message,
            "Put message to [broker '%s'] [partition 'meta-test-0'] failed.Detail:Partition[1-0] has been closed"
            % (BROKER,),
        )

    def test_appendFailure(self):
        self.stores.getOrCreateStore("meta-test", 0).failure = OSError("disk")
        reply = self.successResultOf(self.sync())
        self.assertEqual(reply, ResultCommand(500, b"Put message to [broker '%s'] [partition 'meta-test-0'] failed." % BROKER.encode(), 9))
        self.flushLoggedErrors(OSError)

    def test_noTransactions(self):
        reply = self.factory.dispatch(TransactionCommand("TX:s:1", "s", "BEGIN", 3), None)
        self.assertEqual(reply, ResultCommand(500, b"Unsupported beginTransaction", 3))


class GregorReplyLaterTests(GregorTests):
    """
    The same replies when the broker's connections dispatch the syncs
    (L{SyncProcessor.syncThen}: the reply passed to a callable, no
    Deferred).
    """

    replyLater = True


def _sync(index, topic="meta-test", partition=0, crc=None):
    """
    A sync as a master sends it: its id and opaque from C{index}.
    """
    data = b"message %d" % (index,)
    return SyncCommand(topic, partition, data, 0, 1000 + index, index, checksum(data) if crc is None else crc)


#: A session of a connection from the master.
MASTER = Session(IPv4Address("TCP", "127.0.0.1", 40000))


class GregorBatchTests(_ProcessorCase):
    """
    The bulk path of a gregor slave (L{SyncBatch}: the whole syncs of one
    read): the same stores, replies and statistics as the syncs one by one,
    in one store entry per partition and one reply.
    """

    def setUp(self):
        self.makeSlave()

    def makeSlave(self):
        """
        A gregor slave on a new broker (L{makeBroker}).
        """
        self.makeBroker()
        self.replication = GregorReplication(GregorSlaveConfig())
        self.replication.configure(self.config)
        self.replication.install(self.factory)

    def dispatchBatch(self, syncs):
        """
        The replies to C{syncs} dispatched as one batch from the master,
        decoded (L{answeredAtOnce}).
        """
        return self.answeredAtOnce(SyncBatch(syncs), MASTER)

    def dispatchOneByOne(self, syncs):
        replies = []
        for sync in syncs:
            reply = self.factory.dispatch(sync, MASTER, replies.append)
            if reply is not REPLY_LATER:
                replies.append(reply)
        return replies

    def outcome(self):
        """
        What the slave holds: each partition's records, the statistics.
        """
        stored = {(topic, partition): [(r.id, r.body) for r in self.stored(topic, partition)]
                  for topic, partition in [("meta-test", 0), ("test", 0), ("test", 1)]}
        return stored, self.stats.cmdPut, self.stats.putFailed, dict(self.stats.putsByPartition)

    def test_replicateRight(self):
        """
        Under C{[access]} rules the syncs of a batch need the C{replicate}
        right, as alone: from a master without it each is refused and
        none stored; from one with it, all are stored.
        """
        syncs = [_sync(index) for index in range(2)]
        for grantee, codes, stored in [("10.0.0.6", [401, 401], 0), ("127.0.0.1", [200, 200], 2)]:
            rules = parseAccess([("replicate", grantee)])
            self.factory.access = AccessGate(lambda: rules)
            self.assertEqual([reply.code for reply in self.dispatchBatch(syncs)], codes)
            self.assertEqual(len(self.stored()), stored)

    def test_onePerPartition(self):
        """
        The syncs to each partition are stored in order as one append, each
        answered with its own offset.
        """
        appends = []
        for topic, partition in [("meta-test", 0), ("test", 1)]:
            store = self.stores.getOrCreateStore(topic, partition)
            self.patch(store, "appendRecordsThen", self.counting(store.appendRecordsThen, appends))
        syncs = [_sync(0), _sync(1, "test", 1), _sync(2), _sync(3), _sync(4, "test", 1)]
        replies = self.dispatchBatch(syncs)
        self.assertEqual(sorted(appends), [2, 3])
        size = 20 + len(b"message 0")
        self.assertEqual(sorted(replies, key=lambda reply: reply.opaque), [
            ResultCommand(200, b"1000 0 0", 0),
            ResultCommand(200, b"1001 1 0", 1),
            ResultCommand(200, b"1002 0 %d" % (size,), 2),
            ResultCommand(200, b"1003 0 %d" % (2 * size,), 3),
            ResultCommand(200, b"1004 1 %d" % (size,), 4),
        ])
        self.assertEqual([r.id for r in self.stored()], [1000, 1002, 1003])
        self.assertEqual([r.id for r in self.stored("test", 1)], [1001, 1004])
        self.assertEqual(self.stats.cmdPut, 5)
        self.assertEqual(self.stats.putsByPartition["meta-test", "1-0"], 3)

    @staticmethod
    def counting(appendRecordsThen, appends):
        def counted(buffer, count, stored, failed):
            appends.append(count)
            appendRecordsThen(buffer, count, stored, failed)
        return counted

    def assertSameAsOneByOne(self, syncs, closed=()):
        """
        C{syncs} dispatched as a batch leave the slave as they do one by one
        on a new slave, with the same replies.

        @param closed: the partitions closed on both.
        """
        self.config.closedPartitions.update(closed)
        batched = sorted(self.dispatchBatch(syncs), key=lambda reply: reply.opaque)
        outcome = self.outcome()
        self.makeSlave()
        self.config.closedPartitions.update(closed)
        single = sorted(self.dispatchOneByOne(syncs), key=lambda reply: reply.opaque)
        self.assertEqual(batched, single)
        self.assertEqual(outcome, self.outcome())
        return batched

    def test_badChecksumInTheMiddle(self):
        """
        A sync whose body fails its checksum is refused as alone; those
        around it are stored.
        """
        replies = self.assertSameAsOneByOne([_sync(0), _sync(1, crc=5), _sync(2)])
        self.assertEqual([reply.code for reply in replies], [200, 500, 200])
        self.assertIn("Checksum failure", replies[1].message)
        self.assertEqual([r.id for r in self.stored()], [1000, 1002])

    def test_closedPartitionInTheMiddle(self):
        replies = self.assertSameAsOneByOne([_sync(0), _sync(1, "test", 0), _sync(2), _sync(3, "test", 1)],
                                            closed=[("test", 0)])
        self.assertEqual([reply.code for reply in replies], [200, 403, 200, 200])
        self.assertIn("has been closed", replies[1].message)

    def test_illegalTopicInTheMiddle(self):
        """
        A topic whose name is illegal is refused by the broker's check,
        before the sync processor; an unknown topic and a wrong partition
        by the processor.
        """
        replies = self.assertSameAsOneByOne(
            [_sync(0), _sync(1, "../etc"), _sync(2, "nope"), _sync(3, partition=-1), _sync(4)])
        self.assertEqual([reply.code for reply in replies], [200, 400, 500, 500, 200])

    def test_appendFailed(self):
        """
        A partition whose store fails the append: each of its syncs is
        answered with the error a sync alone gets.
        """
        self.stores.getOrCreateStore("meta-test", 0).failure = OSError("disk")
        self.stores.getOrCreateStore("test", 0)
        replies = sorted(self.dispatchBatch([_sync(0), _sync(1, "test", 0), _sync(2)]),
                         key=lambda reply: reply.opaque)
        self.flushLoggedErrors(OSError)
        error = b"Put message to [broker '%s'] [partition 'meta-test-0'] failed." % BROKER.encode()
        self.assertEqual(replies, [ResultCommand(500, error, 0), ResultCommand(200, b"1001 0 0", 1),
                                   ResultCommand(500, error, 2)])
        self.assertEqual(self.stats.putFailed, 2)

    def test_sealed(self):
        """
        A slave that took its master's place refuses every sync of a batch.
        """
        self.replication.syncProcessor.link.seal()
        replies = self.dispatchBatch([_sync(0), _sync(1, "test", 1)])
        self.assertEqual([reply.message for reply in replies], [
            "Put message to [broker '%s'] [partition 'meta-test-0'] failed.Detail:this slave was promoted "
            "to master" % (BROKER,),
            "Put message to [broker '%s'] [partition 'test-1'] failed.Detail:this slave was promoted "
            "to master" % (BROKER,),
        ])
        self.assertEqual(self.outcome()[0], {("meta-test", 0): [], ("test", 0): [], ("test", 1): []})

    def test_linkUp(self):
        """
        A batch tells the seal's link that the master's connection is up.
        """
        link = self.replication.syncProcessor.link
        self.dispatchBatch([_sync(0), _sync(1)])
        self.assertFalse(link.down)

    def test_noSyncProcessor(self):
        """
        A broker without a sync processor answers each sync of a batch
        with 503, as it answers one.
        """
        self.makeBroker()
        replies = self.dispatchBatch([_sync(0), _sync(1)])
        self.assertEqual([reply.code for reply in replies], [503, 503])
        self.assertEqual(replies, self.dispatchOneByOne([_sync(0), _sync(1)]))

    def test_deferred(self):
        """
        Dispatched without a callable, a batch is answered through a
        Deferred.
        """
        reply = self.successResultOf(defer.maybeDeferred(self.factory.dispatch, SyncBatch([_sync(0), _sync(1)]),
                                                         MASTER))
        self.assertEqual([r.code for r in CommandParser().feed(reply.encode())], [200, 200])

    @settings(max_examples=40, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from([("meta-test", 0), ("test", 0), ("test", 1), ("test", 7),
                                                ("nope", 0), ("a/b", 0)]),
                              st.booleans()), min_size=2, max_size=12),
           st.booleans())
    def test_sameAsOneByOne(self, syncs, closed):
        """
        Any batch leaves the slave as its syncs one by one do, with the same
        replies and statistics.
        """
        self.makeSlave()
        self.assertSameAsOneByOne([_sync(index, topic, partition, crc=None if good else 5)
                                   for index, ((topic, partition), good) in enumerate(syncs)],
                                  closed=[("test", 1)] if closed else [])


class GregorConnectionTests(_ProcessorCase):
    """
    A gregor slave's connection (L{BrokerProtocol} on a
    L{StringTransport}): the whole syncs of one read are one command, in
    their place among the others, answered in one write.
    """

    def setUp(self):
        _ProcessorCase.setUp(self)
        self.replication = GregorReplication(GregorSlaveConfig())
        self.replication.configure(self.config)
        self.replication.install(self.factory)
        self.dispatched = []
        dispatch = self.factory.dispatch

        def recorded(command, session, replied=None):
            self.dispatched.append(command)
            return dispatch(command, session, replied)

        self.patch(self.factory, "dispatch", recorded)
        self.proto = self.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.writes = []
        write = self.transport.write

        def counted(data):
            self.writes.append(data)
            write(data)

        self.transport.write = counted
        self.proto.makeConnection(self.transport)
        self.addCleanup(lambda: self.proto.connected and self.proto.connectionLost(None))

    def replies(self):
        return CommandParser().feed(self.transport.value())

    def test_order(self):
        """
        Syncs, another command, syncs: three commands, handled in that
        order; the syncs are stored in the order they came.
        """
        syncs = [_sync(index) for index in range(5)]
        version = VersionCommand(99)
        self.proto.dataReceived(b"".join(sync.encode() for sync in syncs[:2]) + version.encode()
                                + b"".join(sync.encode() for sync in syncs[2:]))
        self.assertEqual(self.dispatched, [SyncBatch(syncs[:2]), version, SyncBatch(syncs[2:])])
        self.assertEqual([r.id for r in self.stored()], [1000, 1001, 1002, 1003, 1004])
        self.assertEqual([(reply.code, reply.opaque) for reply in self.replies()],
                         [(200, 0), (200, 1), (200, 99), (200, 2), (200, 3), (200, 4)])

    def test_oneWrite(self):
        """
        The replies to the syncs of one read leave in one write, once the
        store has them all.
        """
        store = self.stores.getOrCreateStore("meta-test", 0)
        store.hold = True
        self.proto.dataReceived(b"".join(_sync(index).encode() for index in range(10)))
        self.assertEqual(self.writes, [])
        store.release()
        [write] = self.writes
        self.assertEqual([reply.opaque for reply in CommandParser().feed(write)], list(range(10)))

    def test_sealed(self):
        self.replication.syncProcessor.link.seal()
        self.proto.dataReceived(b"".join(_sync(index).encode() for index in range(3)))
        self.assertEqual([reply.code for reply in self.replies()], [500] * 3)
        self.assertEqual(len(self.writes), 1)
        self.assertEqual(self.stored(), [])

    def test_badChecksumInTheMiddle(self):
        self.proto.dataReceived(_sync(0).encode() + _sync(1, crc=5).encode() + _sync(2).encode())
        self.assertEqual(sorted((reply.opaque, reply.code) for reply in self.replies()),
                         [(0, 200), (1, 500), (2, 200)])
        self.assertEqual([r.id for r in self.stored()], [1000, 1002])

    def test_closedPartitionInTheMiddle(self):
        self.config.closedPartitions.add(("test", 1))
        self.proto.dataReceived(_sync(0).encode() + _sync(1, "test", 1).encode() + _sync(2).encode())
        self.assertEqual(sorted((reply.opaque, reply.code) for reply in self.replies()),
                         [(0, 200), (1, 403), (2, 200)])
        self.assertEqual(self.stored("test", 1), [])

    def test_backPressure(self):
        """
        While the client does not read its replies, a batch waits with the
        other commands read; it is handled once the replies drain.
        """
        self.proto.pauseProducing()
        syncs = [_sync(index) for index in range(3)]
        self.proto.dataReceived(b"".join(sync.encode() for sync in syncs))
        self.assertEqual((self.dispatched, self.stored()), ([], []))
        self.proto.resumeProducing()
        self.assertEqual(self.dispatched, [SyncBatch(syncs)])
        self.assertEqual([reply.opaque for reply in self.replies()], [0, 1, 2])

    def test_unfinishedRequest(self):
        """
        A sync still arriving after whole ones is not part of their batch:
        it counts as a request being received (the broker's limits) and is
        handled once whole.
        """
        syncs = [_sync(index) for index in range(3)]
        wire = b"".join(sync.encode() for sync in syncs)
        self.proto.dataReceived(wire[:-3])
        self.assertEqual(self.dispatched, [SyncBatch(syncs[:2])])
        # Its line is decoded; what is held is its body so far.
        self.assertEqual(self.factory.unfinishedBytes, len(syncs[2].data) - 3)
        self.proto.dataReceived(wire[-3:])
        self.assertEqual(self.dispatched, [SyncBatch(syncs[:2]), syncs[2]])
        self.assertEqual(self.factory.unfinishedBytes, 0)


class FakeLink:
    """
    The master's link to its slave, answered by the test.
    """

    url = "meta://127.0.0.1:8132"
    onSent = None

    def __init__(self):
        self.connected = True
        self.sent = []
        self.writes = []
        self.opaque = 100

    def request(self, makeCommand, timeout):
        if not self.connected:
            return defer.fail(NotConnected())
        self.opaque += 1
        d = defer.Deferred()
        self.sent.append((makeCommand(self.opaque), timeout, d))
        return d

    def send(self, makeCommand, timeout, onReply, onFailure):
        self.request(makeCommand, timeout).addCallbacks(onReply, onFailure)

    def sendFrame(self, head, body, timeout, onReply, onFailure):
        # Decoded as the slave would: the frame must be a whole command.
        def command(opaque):
            [parsed] = list(CommandParser().parse(b"%s%d\r\n%s" % (head, opaque, body)))
            return parsed

        self.send(command, timeout, onReply, onFailure)

    def sendFrames(self, count, encode, timeout, onAnswer, onFailure):
        # Opaques in a row, as the real link gives them, each command
        # decoded as the slave would; each write's count is kept.
        opaques = range(self.opaque + 1, self.opaque + 1 + count)
        commands = list(CommandParser().parse(encode(opaques)))
        assert [command.opaque for command in commands] == list(opaques), commands
        for command in commands:
            self.send(lambda opaque, command=command: command, timeout,
                      lambda reply: onAnswer(reply.code, reply.opaque, reply.body), onFailure)
        self.writes.append(count)
        return opaques

    def answer(self, index, code):
        command, _, d = self.sent[index]
        d.callback(ResultCommand(code, b"", command.opaque))


class FakeRegistration:
    def __init__(self):
        self.events = []

    def unregisterEverything(self):
        self.events.append("unregister")

    def registerEverything(self):
        self.events.append("register")


class _SamsaCase(_ProcessorCase):
    """
    A sync master's broker, with a link to the slave the test answers by
    hand (L{FakeLink}).
    """

    def setUp(self):
        _ProcessorCase.setUp(self)
        self.setUpSamsa()

    def setUpSamsa(self):
        self.clock = Clock()
        self.replication = SamsaReplication(
            SamsaMasterConfig.fromProperties(
                {"slave": "127.0.0.1:8132", "slaveContinuousFailureThreshold": "3", "sendToSlaveTimeoutInMills": "500"}
            ),
            self.clock,
        )
        self.link = self.replication.link = FakeLink()
        self.replication.configure(self.config)
        self.replication.install(self.factory)
        self.registration = self.replication.registration = FakeRegistration()


class SamsaTests(_SamsaCase):
    #: Whether puts are dispatched as the broker's connections do (with a
    #: callable for the reply: L{SyncMasterProcessor.putThen}), rather
    #: than through C{processPut} and a Deferred.
    replyLater = False

    def put(self, data=b"hello", partition=0, opaque=7, crc=None, key=None):
        command = PutCommand("meta-test", partition, data, 0, opaque, checksum(data) if crc is None else crc, key)
        if not self.replyLater:
            return self.factory.dispatch(command, None)
        replies = []
        d = defer.Deferred()

        def replied(reply):
            replies.append(reply)
            if not d.called:
                d.callback(reply)

        reply = self.factory.dispatch(command, None, replied)
        if reply is not REPLY_LATER:
            return reply
        # Answered once, whatever comes later.
        self.addCleanup(lambda: self.assertLessEqual(len(replies), 1))
        return d

    def test_configurePolls(self):
        """
        A sync master whose server.ini does not set C{idlePollMicros} polls
        for L{SYNC_REPLICATION_MICROS}, as its slave does; one that sets
        it, 0 included, keeps it.
        """
        self.assertEqual(self.config.idlePollMicros, SYNC_REPLICATION_MICROS)
        for micros in (0, 250):
            config = MetaConfig(idlePollMicros=micros)
            SamsaReplication(SamsaMasterConfig.fromProperties({"slave": "127.0.0.1:8132"}), self.clock).configure(config)
            self.assertEqual(config.idlePollMicros, micros)

    def test_pollsAfterSyncsLeave(self):
        """
        A master whose broker polls (C{idlePollMicros}) pokes its poller
        after each write of syncs to its slave; one that does not poll
        leaves the link without a hook.
        """
        self.assertIsNone(self.replication.link.onSent)
        replication = SamsaReplication(SamsaMasterConfig.fromProperties({"slave": "127.0.0.1:8132"}), self.clock)
        poller = IdlePoller(self.clock, 0.001)
        poller.startService()
        self.factory.idlePoller = poller
        replication.install(self.factory)
        replication.link.onSent()
        # Poked: a poll turn is scheduled for now.
        self.assertEqual([call.getTime() for call in self.clock.getDelayedCalls()], [self.clock.seconds()])

    def test_bothStored(self):
        """
        The put is forwarded as C{sync} with the master's id, partition,
        flag, body and the producer's checksum; the producer is answered
        only after the slave's 200.
        """
        reply = self.put()
        self.assertNoResult(reply)
        [(command, timeout, _)] = self.link.sent
        [record] = self.stored()
        self.assertEqual(command, SyncCommand("meta-test", 0, b"hello", 0, record.id, 101, checksum(b"hello")))
        self.assertEqual(timeout, 0.5)
        self.link.answer(0, 200)
        self.assertEqual(self.successResultOf(reply), ResultCommand(200, b"%d 0 0" % (record.id,), 7))

    def test_slaveFailed(self):
        reply = self.put()
        self.link.answer(0, 500)
        self.assertEqual(
            self.successResultOf(reply).message,
            "Put message to [slave 'meta://127.0.0.1:8132'] [partition 'meta-test-0'] failed",
        )
        self.assertEqual(self.stats.putFailed, 1)

    def test_masterFailed(self):
        self.stores.getOrCreateStore("meta-test", 0).failure = OSError("disk")
        reply = self.put()
        self.link.answer(0, 200)
        self.assertEqual(
            self.successResultOf(reply).message,
            "Put message to [master '%s'] [partition 'meta-test-0'] failed" % (BROKER,),
        )
        self.flushLoggedErrors(OSError)

    def test_disconnected(self):
        self.link.connected = False
        self.assertEqual(self.put(), ResultCommand(500, b"Slave is disconnected ", 7))
        self.assertEqual(self.stored(), [])

    def test_checksum(self):
        """
        A corrupt body fails with the bare exception text (the slave gets
        the C{sync} too and refuses it by itself; its answer changes
        nothing).
        """
        reply = self.put(crc=1)
        self.assertEqual(
            reply,
            ResultCommand(500, b"Checksum failure,message may be corrupted when transfering on networking.", 7),
        )
        self.assertEqual(self.stored(), [])
        self.link.answer(0, 500)
        self.assertEqual(self.stats.putFailed, 1)

    def test_closed(self):
        self.config.closedPartitions.add(("meta-test", 0))
        self.assertEqual(self.put(), ResultCommand(403, b"Partition[1-0] has been closed", 7))

    def test_transactionalPutIsPlain(self):
        reply = self.put(key="TX:s:1")
        self.link.answer(0, 200)
        self.assertEqual(self.successResultOf(reply).code, 200)

    def test_orderKept(self):
        """
        Ids increase in the order the syncs are sent, which is the order of
        the local appends.
        """
        for opaque in range(5):
            self.put(data=b"m%d" % (opaque,), opaque=opaque)
        self.assertEqual([command.msgId for command, _, _ in self.link.sent], [r.id for r in self.stored()])
        self.assertEqual(sorted(r.id for r in self.stored()), [r.id for r in self.stored()])

    def test_thresholdHeals(self):
        """
        Three timeouts in a row unregister the master; a probe to the
        status topic that succeeds registers it again.
        """
        replies = [self.put(opaque=i) for i in range(3)]
        for i in range(3):
            self.link.sent[i][2].errback(RequestTimeout())
        self.assertEqual([self.successResultOf(r).code for r in replies], [500] * 3)
        self.assertEqual(self.registration.events, ["unregister"])
        probe, timeout, _ = self.link.sent[3]
        self.assertEqual((probe.topic, probe.partition, probe.data, probe.checksum), (SLAVE_STATUS_TOPIC, 0, b"test", checksum(b"test")))
        self.link.answer(3, 500)
        self.clock.advance(0.1)
        self.link.answer(4, 200)
        self.assertEqual(self.registration.events, ["unregister", "register"])

    def test_statsItems(self):
        self.assertEqual(self.replication.statsItems(), [("slave_link", "connected"), ("slave_continuous_failures", 0)])
        self.link.connected = False
        self.put()
        self.assertEqual(dict(self.replication.statsItems())["slave_link"], "disconnected")


class SamsaReplyLaterTests(SamsaTests):
    """
    The same replies when the broker's connections dispatch the puts
    (L{SyncMasterProcessor.putThen}: the reply passed to a callable, no
    Deferred), each given once.
    """

    replyLater = True


class SamsaBatchTests(_SamsaCase):
    """
    The bulk path of a sync master (L{PutBatch}: the whole plain puts of one
    read, L{SyncMasterProcessor.putBatchThen}): each partition's syncs in
    one write to the slave and its records in one append, and every put
    answered as it is alone.
    """

    def puts(self, count, partition=0, topic="meta-test", first=0):
        return [PutCommand(topic, partition, b"m%d" % (i,), 0, i, checksum(b"m%d" % (i,)))
                for i in range(first, first + count)]

    def dispatchBatch(self, puts):
        """
        Dispatch C{puts} as one batch: a list that will hold the replies,
        decoded, once the batch is answered (once, with one L{Replies}).
        """
        replies = []

        def replied(reply):
            self.assertIsInstance(reply, Replies)
            self.assertEqual(replies, [])
            replies.extend(CommandParser().feed(reply.encode()))

        reply = self.factory.dispatch(PutBatch(puts), None, replied)
        if reply is not REPLY_LATER:
            replied(reply)
        return replies

    def answerAll(self, code=200):
        for index in range(len(self.link.sent)):
            self.link.answer(index, code)

    def test_allStored(self):
        """
        The syncs leave in one write, carrying the ids the master stores
        in the same order; the producer is answered only once the slave
        has answered every one, each put with its own offset.
        """
        replies = self.dispatchBatch(self.puts(3))
        self.assertEqual(self.link.writes, [3])
        stored = self.stored()
        self.assertEqual([command.msgId for command, _, _ in self.link.sent], [r.id for r in stored])
        self.assertEqual([command.data for command, _, _ in self.link.sent], [b"m0", b"m1", b"m2"])
        self.link.answer(0, 200)
        self.link.answer(1, 200)
        self.assertEqual(replies, [])
        self.link.answer(2, 200)
        size = 20 + 2
        self.assertEqual(replies, [ResultCommand(200, b"%d 0 %d" % (r.id, i * size), i) for i, r in enumerate(stored)])
        self.assertEqual((self.stats.cmdPut, self.stats.putFailed), (3, 0))

    def test_slaveRefusesOne(self):
        """
        A put the slave refuses gets the slave's error; the others their
        offsets, which count its record (stored here).
        """
        replies = self.dispatchBatch(self.puts(3))
        self.link.answer(0, 200)
        self.link.answer(1, 500)
        self.link.answer(2, 200)
        stored = self.stored()
        self.assertEqual([(reply.code, reply.opaque) for reply in replies], [(200, 0), (500, 1), (200, 2)])
        self.assertEqual(replies[1].message,
                         "Put message to [slave 'meta://127.0.0.1:8132'] [partition 'meta-test-0'] failed")
        self.assertEqual(replies[2].body, b"%d 0 %d" % (stored[2].id, 2 * 22))
        self.assertEqual(self.stats.putFailed, 1)
        self.assertEqual(self.replication.health.consecutiveFailures, 0)

    def test_slaveTimesOut(self):
        """
        A sync that gets no answer (which one a timeout does not say) fails
        its put alone, and counts as a failure of the slave.
        """
        replies = self.dispatchBatch(self.puts(3))
        self.link.answer(2, 200)
        self.link.sent[0][2].errback(RequestTimeout())
        self.link.answer(1, 200)
        self.assertEqual([(reply.code, reply.opaque) for reply in replies], [(500, 0), (200, 1), (200, 2)])
        self.assertEqual(self.stats.putFailed, 1)

    def test_masterFailed(self):
        """
        An append that fails fails every put of it with the master's
        error, whatever the slave said; a disk's error is logged in one
        line, without a traceback.
        """
        self.stores.getOrCreateStore("meta-test", 0).failure = OSError("disk")
        with capturedLogs() as events:
            replies = self.dispatchBatch(self.puts(2))
            self.answerAll()
        self.assertEqual([(reply.code, reply.message) for reply in replies],
                         [(500, "Put message to [master '%s'] [partition 'meta-test-0'] failed" % (BROKER,))] * 2)
        self.assertEqual([formatEvent(event) for event in events], ["Append to meta-test-0 failed: disk"])
        self.assertEqual(self.flushLoggedErrors(OSError), [])
        self.assertEqual(self.stats.putFailed, 2)

    def test_slaveFailuresLoggedAtARate(self):
        """
        A slave that refuses or does not answer every sync is logged once
        per kind an interval, with the count of those not logged, not once
        per put.
        """
        # Below the threshold that takes the master out of ZooKeeper.
        self.replication.health.threshold = 100
        with capturedLogs() as events:
            self.dispatchBatch(self.puts(3))
            self.dispatchBatch(self.puts(3, first=3))
            for index in range(3):
                self.link.answer(index, 500)
            for index in range(3, 6):
                self.link.sent[index][2].errback(RequestTimeout())
            self.clock.advance(61)
            self.dispatchBatch(self.puts(1, first=6))
            self.link.answer(6, 500)
        lines = [formatEvent(event) for event in events]
        self.assertEqual(lines[:2], ["Slave meta://127.0.0.1:8132 refused meta-test-0: 500 ",
                                     "Sync to slave meta://127.0.0.1:8132 failed: "])
        self.assertEqual([event.get("suppressed") for event in events if "refused" in formatEvent(event)], [0, 2])

    def test_badChecksumInTheMiddle(self):
        """
        A put whose body fails its checksum is refused and sends no sync;
        the others are replicated.
        """
        puts = self.puts(3)
        puts[1] = PutCommand("meta-test", 0, b"m1", 0, 1, 5)
        replies = self.dispatchBatch(puts)
        self.assertEqual([command.data for command, _, _ in self.link.sent], [b"m0", b"m2"])
        self.answerAll()
        self.assertEqual([(reply.code, reply.opaque) for reply in replies], [(500, 1), (200, 0), (200, 2)])
        self.assertEqual(replies[0].message, CHECKSUM_FAILURE)
        self.assertEqual([r.body for r in self.stored()], [b"m0", b"m2"])

    def test_readOnlyPartition(self):
        """
        A partition whose files are damaged (read only) refuses its puts
        before any sync leaves, in a batch as one by one: the slave never
        stores what the master cannot.
        """
        self.stores.getOrCreateStore("meta-test", 0).readOnly = "segment lost"
        replies = self.dispatchBatch(self.puts(2))
        alone = self.factory.dispatch(self.puts(1, first=2)[0], None, lambda reply: None)
        self.assertEqual([reply.code for reply in replies] + [alone.code], [500] * 3)
        self.assertTrue(all("is read only" in reply.message for reply in replies + [alone]))
        self.assertEqual((self.link.sent, self.stored()), ([], []))
        self.assertEqual(self.stats.putFailed, 3)

    def test_closedAndDisconnected(self):
        """
        A closed partition's puts get the master's 403 and a put while the
        slave is not connected its 500, at once, as each alone.
        """
        self.config.closedPartitions.add(("meta-test", 0))
        replies = self.dispatchBatch(self.puts(2))
        self.assertEqual(replies, [ResultCommand(403, b"Partition[1-0] has been closed", i) for i in range(2)])
        self.link.connected = False
        replies = self.dispatchBatch(self.puts(1, 1, "test"))
        self.assertEqual(replies, [ResultCommand(500, b"Slave is disconnected ", 0)])
        self.assertEqual((self.link.sent, self.stored(), self.stored("test", 1)), ([], [], []))

    def test_onePerPartition(self):
        """
        Each partition's puts go to the slave in a write of their own and
        to the store as one append; the batch is answered once.
        """
        puts = self.puts(2) + self.puts(3, 1, "test", first=2)
        replies = self.dispatchBatch(puts)
        self.assertEqual(self.link.writes, [2, 3])
        self.answerAll()
        self.assertEqual(sorted(reply.opaque for reply in replies), [0, 1, 2, 3, 4])
        self.assertEqual([r.body for r in self.stored("test", 1)], [b"m2", b"m3", b"m4"])

    @given(st.lists(st.sampled_from(["ok", "refused", "timeout", "badsum"]), min_size=1, max_size=8),
           st.booleans())
    @settings(max_examples=60, deadline=None)
    def test_sameAsOneByOne(self, outcomes, appendFails):
        """
        Whatever the slave says to each sync, and whether the append fails,
        each put of a batch gets the code and text it gets alone.
        """

        def run(batch):
            self.makeBroker()
            self.setUpSamsa()
            if appendFails:
                self.stores.getOrCreateStore("meta-test", 0).failure = OSError("disk")
            puts = []
            for i, outcome in enumerate(outcomes):
                crc = 5 if outcome == "badsum" else checksum(b"m%d" % (i,))
                puts.append(PutCommand("meta-test", 0, b"m%d" % (i,), 0, i, crc))
            if batch:
                replies = self.dispatchBatch(puts)
            else:
                replies = []
                for put in puts:
                    reply = self.factory.dispatch(put, None, replies.append)
                    if reply is not REPLY_LATER:
                        replies.append(reply)
            sent = iter(range(len(self.link.sent)))
            for outcome in outcomes:
                # One by one, the slave gets (and refuses) a bad body's sync too.
                if outcome == "badsum" and batch:
                    continue
                index = next(sent)
                if outcome == "timeout":
                    self.link.sent[index][2].errback(RequestTimeout())
                else:
                    self.link.answer(index, 200 if outcome == "ok" else 500)
            self.flushLoggedErrors(OSError)
            # An id differs from run to run; the partition and offset not.
            return (sorted((reply.opaque, reply.code, reply.message.split(" ", 1)[1] if reply.code == 200
                            else reply.message) for reply in replies),
                    self.stats.cmdPut, self.stats.putFailed)

        self.assertEqual(run(True), run(False))


class _Fence:
    """
    A fence (L{metamorphosis.ha.failover.Fence}) as its processor sees it:
    why puts are refused, or L{None}.
    """

    refusal = None


class FencedBatchTests(_ProcessorCase):
    """
    The fence around a broker's processor keeps its bulk path for the puts
    of one read (L{FencedProcessor.putBatchThen}), and refuses them all
    while fenced; around a sync master's, whose puts go one by one, it
    offers none.
    """

    def setUp(self):
        _ProcessorCase.setUp(self)
        self.fence = _Fence()
        self.factory.processor = FencedProcessor(self.processor, self.fence)

    def dispatchBatch(self, puts):
        return self.answeredAtOnce(PutBatch(puts))

    def test_unfenced(self):
        puts = [PutCommand("meta-test", 0, b"m%d" % (i,), 0, i, checksum(b"m%d" % (i,))) for i in range(3)]
        replies = self.dispatchBatch(puts)
        self.assertEqual([(reply.code, reply.opaque) for reply in replies], [(200, 0), (200, 1), (200, 2)])
        self.assertEqual([record.data for record in self.stored()], [b"m0", b"m1", b"m2"])

    def test_fenced(self):
        self.fence.refusal = "another broker took over"
        puts = [PutCommand("meta-test", 0, b"m%d" % (i,), 0, i, checksum(b"m%d" % (i,))) for i in range(2)]
        replies = self.dispatchBatch(puts)
        self.assertEqual([(reply.code, reply.opaque) for reply in replies], [(500, 0), (500, 1)])
        self.assertTrue(all(reply.message.endswith("Detail:another broker took over") for reply in replies))
        self.assertEqual(self.stored(), [])
        self.assertEqual(self.stats.cmdPut, 0)

    def test_aroundSyncMaster(self):
        """
        Around a sync master's processor, the fence keeps its bulk path.
        """
        self.makeBroker()
        replication = SamsaReplication(SamsaMasterConfig.fromProperties({"slave": "127.0.0.1:8132"}), Clock())
        replication.configure(self.config)
        replication.install(self.factory)
        self.factory.processor = FencedProcessor(self.factory.processor, _Fence())
        self.assertEqual(self.factory.putBatchThen.__func__, FencedProcessor.putBatchThen)

    def test_aroundProcessorWithoutBulkPath(self):
        """
        Around a processor without C{putBatchThen}, the fence offers none:
        the broker's connections hand the puts over one by one.
        """

        class OneByOne:
            def putThen(self, command, session, replied):
                pass

        self.assertIsNone(putBatchThenOf(FencedProcessor(OneByOne(), _Fence())))
        self.assertIsNotNone(putBatchThenOf(FencedProcessor(self.processor, _Fence())))
