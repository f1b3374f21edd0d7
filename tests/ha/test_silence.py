"""
A sync slave's silence detector (docs/ha.md, "Fast failover of a sync
pair"), on the broker's real connections with in-memory transports and a
clock the test moves: a connection of the master's link on which nothing
is read for the limit is closed, so the link goes down even when the
master's host died without closing it; any read, a heartbeat included,
postpones it; connections that are not the link keep the broker's idle
timeout; and the limit applies only while the master announces that it
heartbeats its link.
"""

import json
import os
from types import SimpleNamespace

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.trial import unittest

from metamorphosis import zk
from metamorphosis.broker.config import MetaConfig, TopicConfig
from metamorphosis.broker.server import IDLE_TIMEOUT, BrokerFactory, BrokerProcessor
from metamorphosis.broker.stats import StatsManager
from metamorphosis.ha.config import GregorSlaveConfig, SamsaMasterConfig
from metamorphosis.ha.failover import LINK_HEARTBEAT_KEY, announcedHeartbeat
from metamorphosis.ha.gregor import GregorReplication, MasterWatch
from metamorphosis.ha.samsa import SamsaReplication
from metamorphosis.protocol.ids import IdWorker
from metamorphosis.protocol.records import checksum
from tests.broker.fakes import FakeStoreManager


def syncFrame(data=b"msg", opaque=1):
    return b"sync meta-test 0 %d 0 -5468919651033411584 %d %d\r\n%s" % (len(data), checksum(data), opaque, data)


class SilentLinkTests(unittest.TestCase):
    """
    L{metamorphosis.ha.gregor.MasterLink.closeWhenSilent} on a gregor
    slave's connections.
    """

    def setUp(self):
        config = MetaConfig(brokerId=1, hostName="127.0.0.1", serverPort=8131)
        config.topics = {"meta-test": TopicConfig("meta-test")}
        directory = self.mktemp()
        os.makedirs(directory)
        stores = FakeStoreManager(config, directory)
        self.addCleanup(stores.closeAll)
        self.clock = Clock()
        stats = StatsManager(config, stores, clock=self.clock.seconds)
        self.factory = BrokerFactory(BrokerProcessor(config, stores, stats, IdWorker(1), "127.0.0.1"), stats)
        replication = GregorReplication(GregorSlaveConfig(autoPromote=True))
        replication.install(self.factory)
        self.link = replication.syncProcessor.link
        self.downs = []
        self.link.onDown = lambda: self.downs.append(self.clock.seconds())

    def connect(self):
        proto = self.factory.buildProtocol(None)
        proto.callLater = self.clock.callLater
        transport = StringTransport()
        proto.makeConnection(transport)

        def lost():
            if proto.connected:
                proto.connectionLost(None)

        self.addCleanup(lost)
        return proto, transport

    def closed(self, proto):
        """
        The reactor's part once the connection was aborted.
        """
        proto.connectionLost(None)

    def test_silentLinkClosed(self):
        """
        With a limit of 1 s, a connection that carried a sync and on which
        nothing is then read for 1 s is aborted (logged once), and the link
        goes down when it is gone; a connection that never carried a sync
        (a producer's) keeps the broker's idle timeout.
        """
        self.link.closeWhenSilent(1.0)
        master, masterTransport = self.connect()
        producer, producerTransport = self.connect()
        master.dataReceived(syncFrame())
        self.assertFalse(self.link.down)
        self.clock.advance(0.99)
        self.assertFalse(masterTransport.disconnecting)
        with capturedLogs() as events:
            self.clock.advance(0.01)
        self.assertTrue(masterTransport.disconnected)
        self.assertIn("nothing read for 1.0 s", [formatEvent(e) for e in events][0])
        self.closed(master)
        self.assertTrue(self.link.down)
        self.assertEqual(self.downs, [1.0])
        self.clock.advance(IDLE_TIMEOUT - 1.01)
        self.assertFalse(producerTransport.disconnecting)
        self.clock.advance(0.02)
        self.assertTrue(producerTransport.disconnecting)

    def test_heartbeatKeepsLinkOpen(self):
        """
        Whatever is read postpones the limit: the master's heartbeat
        (C{version}) every 0.3 s keeps an idle link open, and it is closed
        1 s after the last one.
        """
        self.link.closeWhenSilent(1.0)
        master, transport = self.connect()
        master.dataReceived(syncFrame())
        for opaque in range(10):
            self.clock.advance(0.3)
            master.dataReceived(b"version %d\r\n" % (opaque,))
        self.assertFalse(transport.disconnecting)
        self.assertIn(b"result 200", transport.value())
        self.clock.advance(0.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnected)

    def test_limitSetWhileConnected(self):
        """
        A limit set while the link is up applies to its open connections
        from then on; L{None} gives them the broker's idle timeout again.
        """
        master, transport = self.connect()
        master.dataReceived(syncFrame())
        self.clock.advance(5)
        self.link.closeWhenSilent(1.0)
        self.clock.advance(0.5)
        self.link.closeWhenSilent(None)
        self.clock.advance(IDLE_TIMEOUT - 0.01)
        self.assertFalse(transport.disconnecting)
        self.link.closeWhenSilent(2.0)
        self.clock.advance(1.99)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.01)
        self.assertTrue(transport.disconnected)

    def test_noLimitNoClosing(self):
        """
        Without a limit (a master that does not say it heartbeats), an idle
        link stays up as any connection does.
        """
        master, transport = self.connect()
        master.dataReceived(syncFrame())
        self.clock.advance(IDLE_TIMEOUT - 1)
        self.assertFalse(transport.disconnecting)
        self.assertFalse(self.link.down)

    def test_closedConnectionKeepsNoTimer(self):
        """
        A limit set after a connection of the link closed sets no timer for
        it.
        """
        master, _ = self.connect()
        master.dataReceived(syncFrame())
        self.closed(master)
        self.link.closeWhenSilent(1.0)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class AnnouncedHeartbeatTests(unittest.SynchronousTestCase):
    def test_announced(self):
        """
        The seconds a master's state node announces; L{None} for anything
        else.
        """
        self.assertEqual(announcedHeartbeat(b'{"link_heartbeat_ms":300,"role":"master"}'), 0.3)
        for data in (b'{"role":"master"}', b"", b"\xff", b"[]", b'{"link_heartbeat_ms":true}',
                     b'{"link_heartbeat_ms":0}', b'{"link_heartbeat_ms":"300"}', b'{"link_heartbeat_ms":-1}'):
            self.assertIsNone(announcedHeartbeat(data), data)

    def test_samsaAnnounces(self):
        """
        A samsa master's state node says how often it heartbeats its link,
        unless C{linkHeartbeatMs=0}.
        """
        replication = SamsaReplication(SamsaMasterConfig.fromProperties({"slave": "127.0.0.1:1"}), Clock())
        state = dict(replication.stateItems())
        self.assertEqual(state[LINK_HEARTBEAT_KEY], 300)
        self.assertEqual(announcedHeartbeat(json.dumps(state).encode()), 0.3)
        # Not a stats line: the stats stay those of the Java master and ours.
        self.assertNotIn(LINK_HEARTBEAT_KEY, dict(replication.statsItems()))
        quiet = SamsaReplication(SamsaMasterConfig.fromProperties({"slave": "127.0.0.1:1", "linkHeartbeatMs": "0"}),
                                 Clock())
        self.assertNotIn(LINK_HEARTBEAT_KEY, dict(quiet.stateItems()))


class SilenceLimitTests(unittest.SynchronousTestCase):
    """
    The limit a L{MasterWatch} gives its link.
    """

    def watch(self, **keys):
        registration = SimpleNamespace(paths=zk.ZkPaths("/meta"), brokerString="meta://127.0.0.1:2")
        broker = SimpleNamespace(zookeeper=registration, config=SimpleNamespace(brokerId=1), reactor=Clock())
        replication = GregorReplication(GregorSlaveConfig(autoPromote=True, **keys))
        replication.syncProcessor = SimpleNamespace(link=None)
        return MasterWatch(broker, replication.syncProcessor, replication.config)

    def test_limit(self):
        """
        C{masterSilenceMs}, or three of the master's heartbeats if longer;
        none while the master announces no heartbeat, and none with
        C{masterSilenceMs} or fast failover (C{masterGraceMs}) off.
        """
        watch = self.watch()
        self.assertIsNone(watch._silenceLimit())
        watch.candidate.masterHeartbeat = 0.3
        self.assertEqual(watch._silenceLimit(), 1.0)
        watch.candidate.masterHeartbeat = 0.5
        self.assertEqual(watch._silenceLimit(), 1.5)
        for keys in ({"masterSilenceMs": 0}, {"masterGraceMs": 0}):
            watch = self.watch(**keys)
            watch.candidate.masterHeartbeat = 0.3
            self.assertIsNone(watch._silenceLimit(), keys)
