"""
The group commit fsync loop (L{metamorphosis.broker.store.syncloop}): what
one fsync round answers, and what it must not.
"""

import errno
from contextlib import contextmanager

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from metamorphosis.broker.store.syncloop import SyncLoop, SyncLoopStopped
from tests.broker.txsupport import ImmediateReactor, ManualThreadPool


class SyncLoopTests(SynchronousTestCase):
    def setUp(self):
        self.pool = ManualThreadPool()
        self.events = []
        self.failing = []
        self.duringForce = None
        self.loop = self.makeLoop()

    def makeLoop(self, firing=None):
        loop = SyncLoop(ImmediateReactor(Clock()), self.pool, self.force, firing)
        # The pool here runs the loop on the test's thread: no idle wait.
        loop.idleSeconds = 0
        return loop

    def force(self):
        self.events.append("fsync")
        if self.duringForce is not None:
            action, self.duringForce = self.duringForce, None
            action()
        if self.failing:
            raise self.failing.pop(0)

    def request(self, name):
        d = self.loop.request()
        d.addCallbacks(lambda _: self.events.append(name),
                       lambda f: self.events.append((name, f.value)))
        return d

    def runPool(self):
        while self.pool.pending:
            self.pool.runOne()

    def test_oneFsyncAnswersEveryRequestMadeBefore(self):
        """
        Requests made before a round starts are all answered by its one
        fsync, in request order, after it.
        """
        for name in "abc":
            self.request(name)
        self.assertEqual(self.events, [])
        self.runPool()
        self.assertEqual(self.events, ["fsync", "a", "b", "c"])

    def test_requestDuringFsyncWaitsForTheNext(self):
        """
        A request made while an fsync runs (its write came after the fsync
        started) is answered only by the next fsync.
        """
        self.request("a")
        self.duringForce = lambda: self.request("late")
        self.runPool()
        self.assertEqual(self.events, ["fsync", "a", "fsync", "late"])

    def test_failedFsyncFailsWhatItCovered(self):
        """
        A failed fsync fails every request it covered, and only those: the
        next round answers the requests made after it.
        """
        error = OSError(errno.EIO, "Input/output error")
        self.failing.append(error)
        self.request("a")
        self.request("b")
        self.runPool()
        self.assertEqual(self.events, ["fsync", ("a", error), ("b", error)])
        self.request("c")
        self.runPool()
        self.assertEqual(self.events[3:], ["fsync", "c"])

    def test_firingContextPerRound(self):
        """
        The requests one round answers fire inside one entry of the firing
        context (the journal batches their partition writes there).
        """
        @contextmanager
        def firing():
            self.events.append("enter")
            yield
            self.events.append("exit")

        self.loop = self.makeLoop(firing)
        self.request("a")
        self.request("b")
        self.runPool()
        self.assertEqual(self.events, ["fsync", "enter", "a", "b", "exit"])

    def test_stopWaitsForTheLoop(self):
        """
        C{stop} fires once the requests made are answered and the loop has
        left its thread; later requests fail.
        """
        self.request("a")
        stopped = []
        self.loop.stop().addCallback(lambda _: self.events.append("stopped"))
        self.assertEqual(self.events, [])
        self.runPool()
        self.assertEqual(self.events, ["fsync", "a", "stopped"])
        self.loop.request().addErrback(stopped.append)
        self.assertEqual(len(stopped), 1)
        stopped[0].trap(SyncLoopStopped)

    def test_stopWhenIdle(self):
        """
        A loop that does not run stops at once.
        """
        stopped = []
        self.loop.stop().addCallback(stopped.append)
        self.assertEqual(stopped, [None])
        self.assertEqual(self.pool.pending, [])
