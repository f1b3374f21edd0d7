"""
Tests for the request handling of the replication modes, on the broker's
real processor with in-memory stores: the gregor slave's C{sync}
(docs/protocol.md) and the samsa master's puts (docs/ha.md), with a link to the slave the test answers by hand.
"""

import os

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from metamorphosis.broker.config import MetaConfig, TopicConfig
from metamorphosis.broker.idlepoll import SYNC_SLAVE_MICROS
from metamorphosis.broker.server import REPLY_LATER, BrokerFactory, BrokerProcessor
from metamorphosis.broker.stats import StatsManager
from metamorphosis.ha.config import SLAVE_STATUS_TOPIC, GregorSlaveConfig, SamsaMasterConfig
from metamorphosis.ha.gregor import GregorReplication
from metamorphosis.ha.link import NotConnected, RequestTimeout
from metamorphosis.ha.samsa import SamsaReplication
from metamorphosis.protocol.commands import CommandParser, PutCommand, ResultCommand, SyncCommand, TransactionCommand
from metamorphosis.protocol.ids import IdWorker
from metamorphosis.protocol.records import checksum, decodeRecords
from tests.broker.fakes import FakeStoreManager

BROKER = "meta://127.0.0.1:8131"


class _ProcessorCase(unittest.TestCase):
    def setUp(self):
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
        L{SYNC_SLAVE_MICROS}; one that sets it, 0 included, keeps it.
        """
        self.assertEqual(self.config.idlePollMicros, SYNC_SLAVE_MICROS)
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


class FakeLink:
    """
    The master's link to its slave, answered by the test.
    """

    url = "meta://127.0.0.1:8132"

    def __init__(self):
        self.connected = True
        self.sent = []
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


class SamsaTests(_ProcessorCase):
    def setUp(self):
        _ProcessorCase.setUp(self)
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
