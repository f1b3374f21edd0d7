"""
Failover with real processes and a real ZooKeeper: automatic promotion of
an async slave when its master is killed, one promotion among two slaves,
manual promotion with the admin tool, and the fencing of the old master.
"""

import io
import os

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from metamorphosis.ha.failover import MARKER, FailoverRecord
from metamorphosis.protocol.records import decodeRecords
from metamorphosis.tools import failover as tool
from tests.ha.processes import Broker, serverIni, sleep
from tests.waiting import waitFor
from tests.zookeeper import uniqueRoot, zookeeperAddress

TOPICS = (("meta-test", 1),)


class _FailoverCase(TestCase):
    """
    Brokers of broker id 2 in a ZooKeeper root of their own.
    """

    timeout = 90

    def setUp(self):
        self.root = uniqueRoot("ha-failover")
        self.zk = KazooClient(hosts=zookeeperAddress())
        self.zk.start(10)
        self.addCleanup(self.zk.stop)
        self.addCleanup(self.zk.delete, self.root, recursive=True)
        self.opaque = 0

    def ini(self):
        return serverIni(2, TOPICS, zookeeperAddress(), self.root)

    @defer.inlineCallbacks
    def startMaster(self):
        self.master = Broker(self, "master", self.ini())
        yield self.master.start()

    def startSlave(self, slaveId=0, autoPromote=True):
        slave = Broker(
            self,
            "slave%d" % (slaveId,),
            self.ini(),
            "async_slave.properties",
            "slaveId=%d\nslaveMaxDelayInMills=100\nautoPromote=%s\npromoteAfterMs=300\n"
            % (slaveId, "true" if autoPromote else "false"),
        )
        return slave.start().addCallback(lambda _: slave)

    @defer.inlineCallbacks
    def put(self, broker, payload=b"x"):
        client = yield broker.connect()
        try:
            self.opaque += 1
            reply = yield client.put("meta-test", 0, payload, self.opaque)
        finally:
            client.transport.loseConnection()
        return reply

    def data(self, path):
        def get():
            try:
                return self.zk.get(self.root + path)[0]
            except NoNodeError:
                return None

        return deferToThread(get)

    def record(self):
        return self.data("/failover/2").addCallback(lambda data: FailoverRecord.decode(data) if data else None)

    def url(self, broker):
        return "meta://127.0.0.1:%d" % (broker.port,)

    def masterIs(self, broker):
        return self.data("/brokers/ids/2/master").addCallback(lambda data: data == self.url(broker).encode())

    def failoverTool(self, out, *argv):
        """
        Run C{metaq failover} in this process; a Deferred of its exit status.
        """
        options = tool.Options()
        options.parseOptions(["--zookeeper", zookeeperAddress(), "--zk-root", self.root, *argv])
        return defer.ensureDeferred(tool.main(reactor, options, out))



class FailoverTests(_FailoverCase):
    @defer.inlineCallbacks
    def test_automaticPromotionAndFencing(self):
        """
        When the master dies, the slave promotes itself (its data intact),
        registers as the master and takes writes; the old master restarted
        with its old configuration is fenced: out of ZooKeeper, puts
        refused, so the log does not fork.
        """
        yield self.startMaster()
        slave = yield self.startSlave()
        for i in range(20):
            self.assertEqual((yield self.put(self.master, b"before-%d" % (i,))).code, 200)
        yield waitFor(lambda: self.master.segmentFiles("meta-test", 0) == slave.segmentFiles("meta-test", 0))
        yield waitFor(lambda: self.record().addCallback(lambda r: r == FailoverRecord(0, self.url(self.master))))
        # The master has seen the record naming it (and so refuses writes
        # whenever it cannot read it).
        yield waitFor(lambda: os.path.exists(os.path.join(self.master.folder, "data", MARKER)))
        before = self.master.segmentFiles("meta-test", 0)

        yield self.master.kill()
        yield waitFor(lambda: self.masterIs(slave), timeout=30)
        self.assertEqual((yield self.record()), FailoverRecord(1, self.url(slave)))
        self.assertIsNone((yield self.data("/brokers/ids/2/slave0")))
        self.assertEqual((yield deferToThread(self.zk.get_children, self.root + "/consumers/meta-slave-group_0/ids")), [])
        self.assertEqual(slave.segmentFiles("meta-test", 0), before)
        reply = yield self.put(slave, b"after")
        self.assertEqual(reply.code, 200)

        self.master.port = 0
        yield self.master.start()
        # Refused from the start (it took part in failover), then for the
        # reason that it was failed over.
        fenced = b"was failed over to %s (epoch 1)" % (self.url(slave).encode(),)
        replies = []
        yield waitFor(lambda: self.put(self.master, b"fork").addCallback(lambda r: replies.append(r) or fenced in r.body))
        self.assertEqual({reply.code for reply in replies}, {500})
        self.assertTrue((yield self.masterIs(slave)))
        self.assertEqual(self.master.segmentFiles("meta-test", 0), before)

    @defer.inlineCallbacks
    def test_oneOfTwoSlavesPromotes(self):
        """
        Two slaves race for the master's place: exactly one gets it and the
        other replicates from it.
        """
        yield self.startMaster()
        first = yield self.startSlave(0)
        second = yield self.startSlave(1)
        self.assertEqual((yield self.put(self.master, b"one")).code, 200)
        yield waitFor(lambda: self.record().addCallback(lambda r: r is not None))
        # Both caught up: a slave ahead of the one promoted could not follow
        # it (docs/ha.md).
        for slave in (first, second):
            yield waitFor(lambda: slave.segmentFiles("meta-test", 0) == self.master.segmentFiles("meta-test", 0))
        yield self.master.kill()
        yield waitFor(lambda: self.record().addCallback(lambda r: r.epoch == 1), timeout=30)
        record = yield self.record()
        winner, loser = (first, second) if record.master == self.url(first) else (second, first)
        yield waitFor(lambda: self.masterIs(winner))
        self.assertEqual((yield self.put(winner, b"two")).code, 200)
        yield waitFor(lambda: loser.segmentFiles("meta-test", 0) == winner.segmentFiles("meta-test", 0))
        self.assertEqual((yield self.record()).epoch, 1)

    @defer.inlineCallbacks
    def test_manualPromotion(self):
        """
        The admin tool names a slave as the master: the slave promotes
        itself and the running old master is fenced at once.
        """
        yield self.startMaster()
        slave = yield self.startSlave(autoPromote=False)
        self.assertEqual((yield self.put(self.master, b"one")).code, 200)
        yield waitFor(lambda: self.master.segmentFiles("meta-test", 0) == slave.segmentFiles("meta-test", 0))
        out = io.StringIO()
        status = yield self.failoverTool(out, "promote", "2", self.url(slave))
        self.assertEqual(status, 0)
        self.assertIn("master is now %s (epoch 1)" % (self.url(slave),), out.getvalue())
        yield waitFor(lambda: self.masterIs(slave), timeout=30)
        reply = yield self.put(self.master, b"fork")
        self.assertEqual(reply.code, 500)
        self.assertEqual((yield self.put(slave, b"two")).code, 200)
        out = io.StringIO()
        yield self.failoverTool(out, "show", "2")
        self.assertIn("failover record: epoch 1, master %s" % (self.url(slave),), out.getvalue())
        self.assertIn("registered master: %s" % (self.url(slave),), out.getvalue())



class SyncFailoverTests(_FailoverCase):
    """
    A gregor slave with C{autoPromote} taking over from its samsa master.
    """

    @defer.inlineCallbacks
    def test_promotionKeepsEveryAcknowledgedMessage(self):
        """
        The sync slave, invisible in ZooKeeper while its master lives, takes
        its place when it dies, with every message the master acknowledged;
        it refuses syncs from then on, and the old master restarted is
        fenced.
        """
        slave = Broker(
            self, "gregor", self.ini(), "gregor_slave.properties", "autoPromote=true\npromoteAfterMs=300\n"
        )
        yield slave.start()
        self.master = Broker(
            self, "samsa", self.ini(), "samsa_master.properties", "slave=127.0.0.1:%d\n" % (slave.port,)
        )
        yield self.master.start()
        yield waitFor(lambda: self.put(self.master, b"probe").addCallback(lambda r: r.code == 200))
        yield waitFor(lambda: self.record().addCallback(lambda r: r == FailoverRecord(0, self.url(self.master))))
        yield waitFor(lambda: os.path.exists(os.path.join(self.master.folder, "data", MARKER)))
        self.assertIsNone((yield self.data("/brokers/ids/2/slave0")))
        self.assertTrue((yield self.masterIs(self.master)))

        producer = yield self.master.connect()
        acknowledged = set()

        def replied(reply):
            if reply.code == 200:
                acknowledged.add(int(reply.body.split()[0]))

        pending = defer.gatherResults(
            [producer.put("meta-test", 0, b"m-%d" % (i,), 100 + i).addCallbacks(replied, lambda f: None) for i in range(300)]
        )
        yield waitFor(lambda: len(acknowledged) > 20)
        yield self.master.kill()
        yield pending
        yield waitFor(lambda: self.masterIs(slave), timeout=30)
        self.assertEqual((yield self.record()), FailoverRecord(1, self.url(slave)))
        stored = {record.id for record in decodeRecords(b"".join(slave.segmentFiles("meta-test", 0).values()))[0]}
        self.assertEqual(acknowledged - stored, set())
        self.assertEqual((yield self.put(slave, b"after")).code, 200)

        client = yield slave.connect()
        self.addCleanup(client.transport.loseConnection)
        reply = yield client.request(b"sync meta-test 0 4 0 5 -1 9\r\nlate", 9)
        self.assertEqual(reply.code, 500)
        self.assertIn(b"promoted", reply.body)

        self.master.port = 0
        yield self.master.start()
        fenced = b"was failed over to %s (epoch 1)" % (self.url(slave).encode(),)
        yield waitFor(lambda: self.put(self.master, b"fork").addCallback(lambda r: fenced in r.body))
        self.assertTrue((yield self.masterIs(slave)))

    @defer.inlineCallbacks
    def test_slaveStartedFirstWaitsForItsMaster(self):
        """
        A sync slave with C{autoPromote}, started before its master as a
        sync pair is, does not take the place of a master it never saw,
        however long it waits.
        """
        slave = Broker(self, "gregor", self.ini(), "gregor_slave.properties",
                       "autoPromote=true\npromoteAfterMs=100\n")
        yield slave.start()
        yield waitFor(lambda: "No master seen yet" in slave.output)
        # Three rounds of its watch (one each 0.5 s), all past promoteAfterMs.
        yield sleep(1.5)
        self.assertIsNone((yield self.record()))
        self.assertIsNone((yield self.data("/brokers/ids/2/master")))
        self.assertNotIn("Promoted", slave.output)
