"""
Tests for L{metamorphosis.ha.outcome}: the sync master's reply matrix and
its slave failure threshold / healing, driven by a L{Clock}.
"""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from metamorphosis.ha.outcome import SlaveHealth, SyncPut
from metamorphosis.protocol.commands import ResultCommand

SLAVE = "meta://127.0.0.1:8132"
BROKER = "meta://127.0.0.1:8131"


class FakeHealth:
    def __init__(self, events):
        self.events = events

    def succeeded(self):
        self.events.append("succeeded")


class FakeMaster:
    """
    What a L{SyncPut} reports to, recording the calls.
    """

    slaveUrl = SLAVE

    def __init__(self):
        self.events = []
        self.health = FakeHealth(self.events)

    def brokerUrl(self):
        return BROKER

    def putFailed(self, put):
        self.events.append(("putFailed", put))

    def appendFailed(self, failure, put):
        self.events.append(("appendFailed", failure, put))

    def slaveRefused(self, reply, put):
        self.events.append(("slaveRefused", reply, put))
        put.slaveFailed()

    def slaveUnreachable(self, failure, put):
        self.events.append(("slaveUnreachable", failure, put))


class SyncPutTests(SynchronousTestCase):
    def setUp(self):
        self.master = FakeMaster()
        self.replies = []

    def put(self):
        return SyncPut(self.master, "meta-test", 0, -5468919651033411584, 7, self.replies.append)

    def slaveStored(self, put):
        put.slaveReplied(ResultCommand(200, b"-5468919651033411584 0 51", 101))

    def test_bothStored(self):
        """
        The reply waits for both sides and carries the master's offset.
        """
        for order in ((0, 1), (1, 0)):
            del self.replies[:]
            put = self.put()
            steps = [lambda: put.masterStored(88), lambda: self.slaveStored(put)]
            steps[order[0]]()
            self.assertEqual(self.replies, [])
            steps[order[1]]()
            self.assertEqual(self.replies, [ResultCommand(200, b"-5468919651033411584 0 88", 7)])
        self.assertEqual(self.master.events, ["succeeded", "succeeded"])

    def test_slaveFailed(self):
        put = self.put()
        put.slaveFailed()
        self.assertEqual(self.replies, [])
        put.masterStored(0)
        self.assertEqual(
            self.replies,
            [ResultCommand(500, b"Put message to [slave 'meta://127.0.0.1:8132'] [partition 'meta-test-0'] failed", 7)],
        )
        self.assertEqual(self.master.events, [("putFailed", put)])

    def test_masterFailed(self):
        """
        The append's failure is reported to the master (which logs it), and
        the reply names the master.
        """
        put = self.put()
        failure = Failure(OSError("disk"))
        put.masterFailed(failure)
        self.slaveStored(put)
        self.assertEqual(
            self.replies,
            [ResultCommand(500, b"Put message to [master 'meta://127.0.0.1:8131'] [partition 'meta-test-0'] failed", 7)],
        )
        self.assertEqual(self.master.events, [("appendFailed", failure, put), "succeeded", ("putFailed", put)])

    def test_bothFailed(self):
        """
        Where Java never answers, the producer gets the master's error.
        """
        put = self.put()
        put.masterFailed(Failure(OSError("disk")))
        put.slaveFailed()
        [reply] = self.replies
        self.assertEqual(reply.code, 500)
        self.assertIn(b"[master ", reply.body)

    def test_onlyOnce(self):
        put = self.put()
        put.masterStored(0)
        self.slaveStored(put)
        put.slaveFailed()
        self.assertEqual([reply.code for reply in self.replies], [200])

    def test_slaveRefused(self):
        """
        A reply other than 200 (or anything but a result) is the master's
        to judge; the link's failure too.
        """
        put = self.put()
        refusal = ResultCommand(500, b"no", 101)
        put.slaveReplied(refusal)
        put.masterStored(0)
        self.assertEqual([reply.code for reply in self.replies], [500])
        other, failure = self.put(), Failure(RuntimeError("lost"))
        other.slaveUnreachable(failure)
        self.assertEqual(
            self.master.events,
            [("slaveRefused", refusal, put), ("putFailed", put), ("slaveUnreachable", failure, other)],
        )


class SlaveHealthTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.events = []
        self.probes = []
        self.health = SlaveHealth(
            3, 1.0, self.probe, lambda: self.events.append("unregister"), lambda: self.events.append("register"), self.clock
        )

    def probe(self):
        d = defer.Deferred()
        self.probes.append(d)
        return d

    def test_belowThreshold(self):
        """
        Failures separated by a success never reach the threshold.
        """
        for _ in range(5):
            self.health.failed()
            self.health.failed()
            self.health.succeeded()
        self.assertEqual(self.events, [])
        self.assertIsNone(self.health.healing)

    def test_thresholdUnregistersAndHeals(self):
        for _ in range(3):
            self.health.failed()
        self.assertEqual(self.events, ["unregister"])
        self.assertEqual(self.health.consecutiveFailures, 0)
        self.assertEqual(len(self.probes), 1)
        # A failing probe is retried after the interval, not before.
        self.probes[0].callback(504)
        self.clock.advance(0.5)
        self.assertEqual(len(self.probes), 1)
        self.clock.advance(0.5)
        self.assertEqual(len(self.probes), 2)
        self.probes[1].errback(ConnectionError("refused"))
        self.clock.advance(1.0)
        self.assertEqual(len(self.probes), 3)
        # More failures while healing do not start a second healer.
        for _ in range(6):
            self.health.failed()
        self.assertEqual(self.events, ["unregister"])
        self.probes[2].callback(200)
        self.assertEqual(self.events, ["unregister", "register"])
        self.assertIsNone(self.health.healing)
        self.assertEqual(self.health.consecutiveFailures, 0)
        self.assertEqual(len(self.probes), 3)

    def test_healsAgain(self):
        for _ in range(3):
            self.health.failed()
        self.probes[0].callback(200)
        for _ in range(3):
            self.health.failed()
        self.assertEqual(self.events, ["unregister", "register", "unregister"])

    def test_stop(self):
        for _ in range(3):
            self.health.failed()
        self.health.stop()
        self.probes[0].callback(500)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(1)
        self.assertEqual(len(self.probes), 1)
        self.assertEqual(self.events, ["unregister"])

    def test_stopWhilePausing(self):
        """
        Stopped between two probes, the healer cancels its pause: a
        stopped broker leaves no timer behind.
        """
        for _ in range(3):
            self.health.failed()
        self.probes[0].callback(500)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.health.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertEqual(len(self.probes), 1)
        self.assertEqual(self.events, ["unregister"])
