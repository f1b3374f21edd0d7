"""
Fast failover of a sync pair, with real broker processes, a real ZooKeeper
and the default ZooKeeper session timeout (30 s): a samsa master killed
under load from the Python producer is replaced by its gregor slave without
waiting for its session to expire; so is a master frozen with SIGSTOP (a
host that died without closing its connections), which, resumed, is fenced
and acknowledges nothing; a link cut between a live master and its slave
deposes nobody, nor does an idle master cut off from ZooKeeper only (its
link heartbeat keeps its slave); a master cut off from both its slave and
ZooKeeper is replaced, and when it comes back it is fenced and never takes
a write.

The kill and freeze tests print their figures (kill or freeze to the first
acknowledged put on the promoted slave, acknowledged messages lost,
duplicates); docs/ha.md reports them.
"""

import io
import time

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from metamorphosis.client.errors import MetaClientError
from metamorphosis.client.message import Message
from metamorphosis.client.session import MetaClientConfig, MetaMessageSessionFactory
from metamorphosis.ha.failover import FailoverRecord
from metamorphosis.protocol.records import decodeRecords
from tests.ha.processes import Broker, CuttableProxy, serverIni
from tests.ha.test_failover import _FailoverCase
from tests.waiting import waitFor
from tests.zookeeper import zookeeperAddress

#: The broker default, which the fast path must not wait for.
SESSION_TIMEOUT_MS = 30000

#: The slave's default C{masterGraceMs}.
GRACE = 1.2


class ProducerLoad:
    """
    Python producers putting unique bodies, one send in flight each; a
    failed send is retried with the same body until it is acknowledged, as
    an application would (so a message may be stored twice).

    @ivar acknowledged: the bodies acknowledged.
    @ivar firstAfter: C{time.monotonic()} of the first acknowledgement of a
        send started after L{since}.
    """

    def __init__(self, producer, topic, loops=4):
        self.producer = producer
        self.topic = topic
        self.acknowledged = set()
        self.failures = 0
        self.since = None
        self.firstAfter = None
        self.running = True
        self._loops = [defer.ensureDeferred(self._loop(n)) for n in range(loops)]

    async def _loop(self, n):
        sequence = 0
        while self.running:
            body = b"load-%d-%d" % (n, sequence)
            while self.running:
                started = time.monotonic()
                try:
                    result = await self.producer.sendMessage(Message(self.topic, body), timeout=2.0)
                    success = result.success
                except MetaClientError:
                    success = False
                if success:
                    self.acknowledged.add(body)
                    if self.since is not None and started > self.since and self.firstAfter is None:
                        self.firstAfter = time.monotonic()
                    break
                self.failures += 1
                await deferLater(reactor, 0.02, lambda: None)
            sequence += 1

    def stop(self):
        self.running = False
        return defer.gatherResults(self._loops)


class FastSyncFailoverTests(_FailoverCase):
    timeout = 180

    def ini(self, zkConnect=None):
        return serverIni(2, (("meta-test", 1),), zkConnect or zookeeperAddress(), self.root,
                         zkSessionTimeoutMs=SESSION_TIMEOUT_MS)

    @defer.inlineCallbacks
    def startPair(self, linkThroughProxy=False, masterZk=None):
        """
        A gregor slave with C{autoPromote} (default grace) and its samsa
        master, optionally linked through a L{CuttableProxy} and with the
        master's ZooKeeper behind another.
        """
        self.slave = Broker(self, "gregor", self.ini(), "gregor_slave.properties", "autoPromote=true\n")
        yield self.slave.start()
        slavePort = self.slave.port
        self.link = None
        if linkThroughProxy:
            self.link = CuttableProxy(self.slave.port)
            self.addCleanup(self.link.stop)
            slavePort = self.link.address
        self.master = Broker(
            self, "samsa", self.ini(masterZk), "samsa_master.properties", "slave=127.0.0.1:%d\n" % (slavePort,)
        )
        yield self.master.start()
        yield waitFor(lambda: self.put(self.master, b"probe").addCallback(lambda r: r.code == 200))
        yield waitFor(lambda: self.record().addCallback(lambda r: r == FailoverRecord(0, self.url(self.master))))
        yield waitFor(lambda: self.masterIs(self.master))
        # The master beats: its state node exists.
        yield waitFor(lambda: self.data("/failover-brokers/2/127.0.0.1:%d" % (self.master.port,)))

    def state(self, broker):
        return self.data("/failover-brokers/2/127.0.0.1:%d" % (broker.port,))

    def beats(self, broker):
        """
        The version of C{broker}'s state node: a live master raises it at
        every round of its fence.
        """
        def version():
            stat = self.zk.exists(self.root + "/failover-brokers/2/127.0.0.1:%d" % (broker.port,))
            return None if stat is None else stat.version

        return deferToThread(version)

    def storedBodies(self, broker):
        records = decodeRecords(b"".join(broker.segmentFiles("meta-test", 0).values()))[0]
        return [record.data for record in records]

    @defer.inlineCallbacks
    def startLoad(self):
        """
        The Python producer, through ZooKeeper, under L{ProducerLoad}, once
        200 of its puts were acknowledged.
        """
        factory = MetaMessageSessionFactory(
            MetaClientConfig(zkConnect=zookeeperAddress(), zkRoot=self.root, reconnectIntervalInMills=100,
                             localMessagePath=self.mktemp(), asyncStoragePath=self.mktemp()),
            reactor,
        )
        self.addCleanup(factory.close)
        yield factory.start()
        producer = factory.createProducer()
        yield producer.publish("meta-test")
        load = ProducerLoad(producer, "meta-test")
        self.addCleanup(load.stop)
        yield waitFor(lambda: len(load.acknowledged) >= 200, timeout=60)
        return load

    @defer.inlineCallbacks
    def failOver(self, load, signal):
        """
        Stop the master with C{signal} under C{load}, wait for the first
        put acknowledged by the promoted slave and 100 more, and check and
        print the figures.

        @return: a Deferred firing with the seconds from the signal to that
            first acknowledgement.
        """
        signalled = time.monotonic()
        yield self.master.kill(signal)
        load.since = time.monotonic()
        yield waitFor(lambda: load.firstAfter is not None, timeout=60)
        recovered = load.firstAfter - signalled
        promoted = len(load.acknowledged)
        yield waitFor(lambda: len(load.acknowledged) >= promoted + 100, timeout=60)
        yield load.stop()

        self.assertEqual((yield self.record()), FailoverRecord(1, self.url(self.slave)))
        self.assertTrue((yield self.masterIs(self.slave)))
        # Taken over through the fast path, not after the session expired.
        self.assertIn("link down and no beat in ZooKeeper", self.slave.output)
        stored = self.storedBodies(self.slave)
        lost = load.acknowledged - set(stored)
        duplicates = len(stored) - len(set(stored))
        print(
            "\nfast failover (zkSessionTimeoutMs=%d, masterGraceMs=%d): %s -> first acknowledged put on the "
            "promoted slave %.2f s; %d acknowledged, %d lost, %d duplicates, %d failed sends retried"
            % (SESSION_TIMEOUT_MS, GRACE * 1000, "kill -9" if signal == "KILL" else "SIG" + signal, recovered,
               len(load.acknowledged), len(lost), duplicates, load.failures)
        )
        self.assertEqual(lost, set())
        return recovered

    @defer.inlineCallbacks
    def test_killUnderLoad(self):
        """
        kill -9 of the master while the Python producer puts: the slave
        takes over without waiting for the master's session (30 s) to
        expire, the producer moves to it through ZooKeeper, and every
        acknowledged message is on it.  The old master restarted is fenced.
        """
        yield self.startPair()
        load = yield self.startLoad()

        # A TLS address of the old master, held by a session that outlives
        # it: the promoted slave (without TLS) must not leave it behind.
        yield deferToThread(self.zk.create, self.root + "/brokers/ids/2/tls-master", b"meta://127.0.0.1:1",
                            ephemeral=True)
        yield self.failOver(load, "KILL")
        self.assertIsNone((yield self.data("/brokers/ids/2/tls-master")))

        # The pair as the admin tool shows it: the new master, and the old
        # one's node left by its session, which has not expired yet.
        out = io.StringIO()

        def shown():
            out.seek(0)
            out.truncate()
            return self.failoverTool(out, "show", "2").addCallback(lambda _: "NOT BEATING" in out.getvalue())

        yield waitFor(shown)
        text = out.getvalue()
        self.assertIn("failover record: epoch 1, master %s" % (self.url(self.slave),), text)
        self.assertIn("registered master: %s\n" % (self.url(self.slave),), text)
        self.assertRegex(text, "broker %s: master, epoch 0, .*NOT BEATING" % (self.url(self.master),))
        self.assertRegex(text, "broker %s: master, epoch 1, .*written" % (self.url(self.slave),))

        # The old master, restarted while its old session may still be
        # open, is fenced: it refuses puts and does not take the id back.
        self.master.port = 0
        yield self.master.start()
        fenced = b"was failed over to %s (epoch 1)" % (self.url(self.slave).encode(),)
        replies = []
        yield waitFor(lambda: self.put(self.master, b"fork").addCallback(
            lambda r: replies.append(r) or fenced in r.body))
        self.assertEqual({reply.code for reply in replies}, {500})
        self.assertTrue((yield self.masterIs(self.slave)))
        self.assertNotIn(b"fork", self.storedBodies(self.master))

    @defer.inlineCallbacks
    def test_frozenMasterUnderLoad(self):
        """
        The master's host dies without closing its connections, simulated
        by SIGSTOP while the Python producer puts: its link stays open and
        its session stays until it expires (30 s), but its link heartbeat
        and its beat in ZooKeeper stop.  The slave closes the silent link
        and takes over through the fast path; every acknowledged message is
        on it.  A put sent to the frozen master meanwhile, and every put
        after it is resumed (SIGCONT), is refused: its syncs are refused by
        the promoted slave, it finds itself failed over and fences itself.
        """
        yield self.startPair()
        # The slave has read the master's word that it heartbeats its link.
        yield waitFor(lambda: "closed after 1.0 s without a read" in self.slave.output)
        load = yield self.startLoad()
        yield self.failOver(load, "STOP")
        self.assertIn("nothing read for 1.0 s", self.slave.output)

        # Sent to the frozen master: it lies in its socket until it resumes.
        client = yield self.master.connect()
        self.addCleanup(client.transport.loseConnection)
        frozenPut = client.put("meta-test", 0, b"sent-while-frozen", 1)
        yield self.master.kill("CONT")
        reply = yield frozenPut
        self.assertEqual(reply.code, 500, reply.body)
        # Its link is gone; on its new one the promoted slave refuses it.
        yield waitFor(lambda: "refused this master's syncs" in self.master.output, timeout=30)
        self.assertIn("this slave was promoted to master", self.master.output)
        yield waitFor(lambda: self.state(self.master).addCallback(lambda s: s is not None and b'"fenced"' in s),
                      timeout=30)
        reply = yield self.put(self.master, b"resumed")
        self.assertEqual(reply.code, 500)
        self.assertIn(b"was failed over to %s (epoch 1)" % (self.url(self.slave).encode(),), reply.body)
        self.assertTrue((yield self.masterIs(self.slave)))
        stored = self.storedBodies(self.slave)
        self.assertNotIn(b"sent-while-frozen", stored)
        self.assertNotIn(b"resumed", stored)
        self.assertEqual((yield self.put(self.slave, b"new-master")).code, 200)

        out = io.StringIO()
        self.assertEqual((yield self.failoverTool(out, "show", "2")), 0)
        self.assertRegex(out.getvalue(), "broker %s: fenced, epoch 1, .*heartbeat to slave every 300 ms"
                         % (self.url(self.master),))

    @defer.inlineCallbacks
    def test_idleMasterCutOffFromZooKeeperKeepsItsSlave(self):
        """
        An idle master cut off from ZooKeeper only: its beat stops and it
        refuses puts, but its link heartbeat goes on, so its slave (which
        closes a link silent for 1 s) keeps the link and does not take
        over, however long the cut; when ZooKeeper returns the master takes
        puts again.
        """
        zkHost, zkPort = zookeeperAddress().rsplit(":", 1)
        zkProxy = CuttableProxy(int(zkPort))
        self.addCleanup(zkProxy.stop)
        yield self.startPair(linkThroughProxy=True, masterZk="127.0.0.1:%d" % (zkProxy.address,))
        yield waitFor(lambda: "closed after 1.0 s without a read" in self.slave.output)

        zkProxy.cutLink()
        yield waitFor(lambda: self.put(self.master, b"cut").addCallback(
            lambda r: r.code == 500 and b"lost ZooKeeper" in r.body))
        # Twenty heartbeats (version requests of 21 bytes, every 0.3 s)
        # and nothing else: well past the slave's limit of silence and
        # grace together.
        sent = self.link.forwarded
        yield waitFor(lambda: self.link.forwarded >= sent + 20 * 21, timeout=60)
        self.assertEqual((yield self.record()), FailoverRecord(0, self.url(self.master)))
        self.assertNotIn("Promoted", self.slave.output)
        self.assertNotIn("nothing read for", self.slave.output)
        self.assertNotIn("Master link from", self.slave.output)

        zkProxy.heal()
        yield waitFor(lambda: self.put(self.master, b"back").addCallback(lambda r: r.code == 200), timeout=60)
        self.assertIn(b"back", self.storedBodies(self.slave))

    @defer.inlineCallbacks
    def test_cutLinkDoesNotDeposeALiveMaster(self):
        """
        The link between a live master and its slave is cut: the master,
        still beating in ZooKeeper, stays the master (its puts fail, since
        it cannot replicate them) and takes puts again when the link heals.
        Killed while the link is down, it is replaced.
        """
        yield self.startPair(linkThroughProxy=True)
        self.link.cutLink()
        yield waitFor(lambda: self.put(self.master, b"cut").addCallback(
            lambda r: r.code == 500 and b"Slave is disconnected" in r.body))
        yield waitFor(lambda: self.state(self.slave).addCallback(lambda s: s is not None and b"disconnected" in s))
        # Ten beats of the master - well past the slave's grace - while the
        # link is down.
        first = yield self.beats(self.master)
        yield waitFor(lambda: self.beats(self.master).addCallback(lambda v: v >= first + 10))
        self.assertEqual((yield self.record()), FailoverRecord(0, self.url(self.master)))
        self.assertTrue((yield self.masterIs(self.master)))
        self.assertNotIn("Promoted", self.slave.output)
        self.assertEqual((yield self.put(self.slave, b"slave-still-a-slave")).code, 200)

        self.link.heal()
        # The master announces itself on its new connection: the slave
        # knows its link is up again before any put.
        yield waitFor(lambda: self.state(self.slave).addCallback(lambda s: s is not None and b'"connected"' in s))
        yield waitFor(lambda: self.put(self.master, b"healed").addCallback(lambda r: r.code == 200))
        self.assertIn(b"healed", self.storedBodies(self.slave))

        self.link.cutLink()
        yield self.master.kill()
        yield waitFor(lambda: self.masterIs(self.slave), timeout=60)
        self.assertEqual((yield self.record()), FailoverRecord(1, self.url(self.slave)))
        self.assertEqual((yield self.put(self.slave, b"after")).code, 200)

    @defer.inlineCallbacks
    def test_isolatedMasterIsFencedWhenItReturns(self):
        """
        A master cut off from its slave and from ZooKeeper, alive, with its
        session still open: it refuses puts at once (it cannot replicate,
        and cannot know whether it was replaced), the slave takes its place
        in ZooKeeper over the old session's nodes, and when the master's
        links return it finds itself failed over, stays out of ZooKeeper and
        keeps refusing puts; its syncs are refused by the new master.
        """
        zkHost, zkPort = zookeeperAddress().rsplit(":", 1)
        zkProxy = CuttableProxy(int(zkPort))
        self.addCleanup(zkProxy.stop)
        yield self.startPair(linkThroughProxy=True, masterZk="127.0.0.1:%d" % (zkProxy.address,))
        before = self.storedBodies(self.master)

        zkProxy.cutLink()
        self.link.cutLink()
        yield waitFor(lambda: self.masterIs(self.slave), timeout=60)
        self.assertEqual((yield self.record()), FailoverRecord(1, self.url(self.slave)))
        self.assertEqual((yield self.put(self.slave, b"new-master")).code, 200)
        self.assertEqual((yield self.put(self.master, b"isolated")).code, 500)

        zkProxy.heal()
        self.link.heal()
        yield waitFor(lambda: self.state(self.master).addCallback(lambda s: s is not None and b'"fenced"' in s),
                      timeout=60)
        reply = yield self.put(self.master, b"returned")
        self.assertEqual(reply.code, 500)
        self.assertIn(b"was failed over to %s (epoch 1)" % (self.url(self.slave).encode(),), reply.body)
        self.assertTrue((yield self.masterIs(self.slave)))
        self.assertEqual(self.storedBodies(self.master), before)
        self.assertNotIn(b"returned", self.storedBodies(self.slave))

        out = io.StringIO()
        self.assertEqual((yield self.failoverTool(out, "show", "2")), 0)
        text = out.getvalue()
        self.assertIn("failover record: epoch 1, master %s" % (self.url(self.slave),), text)
        self.assertIn("broker %s: fenced, epoch 1" % (self.url(self.master),), text)
        self.assertIn("broker %s: master, epoch 1" % (self.url(self.slave),), text)
