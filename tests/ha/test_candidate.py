"""
The decision of a sync slave to take over (L{failover.Candidate} with a
link) against a real ZooKeeper and a clock the test moves: both the lost
link and the stopped beat are needed, the syncs are refused before the
claim is written, and a lost claim takes them again.  And
L{gregor.MasterLink}: which connections make the master's link.
"""

from kazoo.client import KazooClient
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from metamorphosis import zk
from metamorphosis.ha.failover import (
    Candidate,
    FailoverRecord,
    readRecord,
    recordPath,
    statesPath,
)
from metamorphosis.ha.gregor import MasterLink
from tests.zookeeper import uniqueRoot, zookeeperAddress

MASTER = "meta://127.0.0.1:7001"
SLAVE = "meta://127.0.0.1:7002"


class SteeredClock:
    """
    The reactor, with a time the test sets.
    """

    def __init__(self):
        self.now = 1000.0

    def seconds(self):
        return self.now

    def callFromThread(self, f, *args, **kwargs):
        reactor.callFromThread(f, *args, **kwargs)


class Link(MasterLink):
    """
    A master link whose state the test sets, recording the seals.
    """

    def __init__(self, down):
        MasterLink.__init__(self)
        self.forcedDown = down
        self.seals = []

    @property
    def down(self):
        return self.forcedDown

    def seal(self, whenDown=False):
        sealed = MasterLink.seal(self, whenDown)
        self.seals.append((whenDown, sealed))
        return sealed


class CandidateTests(TestCase):
    def setUp(self):
        self.client = KazooClient(hosts=zookeeperAddress())
        self.client.start(10)
        self.addCleanup(self.client.stop)
        self.paths = zk.ZkPaths(uniqueRoot("candidate"))
        self.addCleanup(self.client.delete, self.paths.root, recursive=True)
        self.path = recordPath(self.paths, 2)
        self.beatPath = statesPath(self.paths, 2) + "/127.0.0.1:7001"
        self.clock = SteeredClock()
        self.candidate = Candidate(self.path, True, 5.0, lambda: SLAVE, self.clock, 1.2, statesPath(self.paths, 2))
        return deferToThread(self._setUpNodes)

    def _setUpNodes(self):
        self.client.create(self.path, FailoverRecord(0, MASTER).encode(), makepath=True)
        self.client.create(self.beatPath, b"{}", makepath=True)

    def beat(self):
        return deferToThread(self.client.set, self.beatPath, b"{}")

    def decide(self, link, masterUrl=MASTER):
        return defer.ensureDeferred(self.candidate.shouldPromote(self.client, masterUrl, link))

    def record(self):
        return defer.ensureDeferred(readRecord(self.client, self.path, self.clock)).addCallback(lambda r: r[0])

    @defer.inlineCallbacks
    def test_linkDownAndBeatStopped(self):
        """
        With the link down, the slave claims the record once the master's
        beat has not changed for the grace, sealing the link first.
        """
        link = Link(down=True)
        self.assertFalse((yield self.decide(link)))
        self.clock.now += 1.0
        self.assertFalse((yield self.decide(link)))
        self.assertEqual(link.seals, [])
        self.clock.now += 0.3
        self.assertTrue((yield self.decide(link)))
        self.assertEqual(link.seals, [(True, True)])
        self.assertTrue(link.sealed)
        self.assertEqual((yield self.record()), FailoverRecord(1, SLAVE))

    @defer.inlineCallbacks
    def test_masterHeartbeat(self):
        """
        The candidate reads the link heartbeat the master announces in its
        state node, as it changes; a record naming another master forgets
        it.
        """
        link = Link(down=False)
        yield self.decide(link)
        self.assertIsNone(self.candidate.masterHeartbeat)
        yield deferToThread(self.client.set, self.beatPath, b'{"link_heartbeat_ms":300,"role":"master"}')
        yield self.decide(link)
        self.assertEqual(self.candidate.masterHeartbeat, 0.3)
        yield deferToThread(self.client.set, self.beatPath, b'{"role":"master"}')
        yield self.decide(link)
        self.assertIsNone(self.candidate.masterHeartbeat)
        yield deferToThread(self.client.set, self.beatPath, b'{"link_heartbeat_ms":300,"role":"master"}')
        yield self.decide(link)
        other = FailoverRecord(0, "meta://127.0.0.1:7003")
        yield deferToThread(self.client.set, self.path, other.encode())
        yield self.decide(link)
        self.assertIsNone(self.candidate.masterHeartbeat)

    @defer.inlineCallbacks
    def test_flappingLinkDeposesNoBeatingMaster(self):
        """
        However long and often the link is down, a master whose beat keeps
        changing is not deposed.
        """
        link = Link(down=True)
        for _ in range(10):
            link.forcedDown = not link.forcedDown
            self.assertFalse((yield self.decide(link)))
            yield self.beat()
            self.clock.now += 1.0
        self.assertEqual(link.seals, [])
        self.assertEqual((yield self.record()), FailoverRecord(0, MASTER))

    @defer.inlineCallbacks
    def test_beatStoppedButLinkUp(self):
        """
        A master that stopped beating (cut off from ZooKeeper) but still
        replicates to this slave is not deposed here: it refuses writes
        itself while ZooKeeper is away.
        """
        link = Link(down=False)
        self.assertFalse((yield self.decide(link)))
        self.clock.now += 60
        self.assertFalse((yield self.decide(link)))
        self.assertEqual((yield self.record()), FailoverRecord(0, MASTER))

    @defer.inlineCallbacks
    def test_masterThatNeverBeats(self):
        """
        A master without a state node (a Java samsa master) never looks
        stopped: only the slow path (its registration gone) applies.
        """
        yield deferToThread(self.client.delete, self.beatPath)
        link = Link(down=True)
        self.assertFalse((yield self.decide(link)))
        self.clock.now += 60
        self.assertFalse((yield self.decide(link)))
        self.assertEqual(link.seals, [])
        # Its registration gone: promoteAfterMs (5 s) applies.
        self.assertFalse((yield self.decide(link, masterUrl=None)))
        self.clock.now += 5
        self.assertTrue((yield self.decide(link, masterUrl=None)))
        self.assertEqual((yield self.record()), FailoverRecord(1, SLAVE))

    @defer.inlineCallbacks
    def test_beatNodeGone(self):
        """
        A beat node that disappears (the master's session closed) counts as
        stopped at once.
        """
        link = Link(down=True)
        self.assertFalse((yield self.decide(link)))
        yield deferToThread(self.client.delete, self.beatPath)
        self.assertTrue((yield self.decide(link)))

    @defer.inlineCallbacks
    def test_lostClaimUnseals(self):
        """
        When the record changed under the claim (an operator promoted
        another broker), the seal is lifted: this slave takes syncs again.
        """
        link = Link(down=True)
        self.assertFalse((yield self.decide(link)))
        self.clock.now += 2
        original = self.candidate._claim

        async def raced(client, record, version, ownUrl, link, linkDown=False):
            await deferToThread(client.set, self.path, FailoverRecord(1, "meta://127.0.0.1:7003").encode())
            return await original(client, record, version, ownUrl, link, linkDown)

        self.candidate._claim = raced
        self.assertFalse((yield self.decide(link)))
        self.assertEqual(link.seals, [(True, True)])
        self.assertFalse(link.sealed)


class MasterLinkTests(TestCase):
    def test_syncConnections(self):
        """
        The link is up while a connection that carried a sync is open; the
        last one closing calls C{onDown} once.
        """
        link = MasterLink()
        downs = []
        link.onDown = lambda: downs.append(True)
        self.assertTrue(link.down)
        first, second, other = object(), object(), object()
        link.synced(first)
        link.synced(second)
        link.synced(first)
        self.assertFalse(link.down)
        link.closed(other)
        link.closed(first)
        self.assertEqual(downs, [])
        link.closed(second)
        self.assertTrue(link.down)
        self.assertEqual(downs, [True])

    def test_sealWhenDown(self):
        """
        C{seal(whenDown=True)} seals only a link that is down.
        """
        link = MasterLink()
        session = object()
        link.synced(session)
        self.assertFalse(link.seal(whenDown=True))
        self.assertFalse(link.sealed)
        link.closed(session)
        self.assertTrue(link.seal(whenDown=True))
        self.assertTrue(link.sealed)
        link.unseal()
        self.assertFalse(link.sealed)
        link.synced(session)
        self.assertTrue(link.seal())
        self.assertTrue(link.sealed)
