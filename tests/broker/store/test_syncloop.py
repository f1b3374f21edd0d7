"""
The group commit fsync rounds (L{metamorphosis.broker.store.syncloop}):
what one round answers, and what it must not.
"""

import errno
from contextlib import contextmanager

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from metamorphosis.broker.store.bursts import batchedWrites
from metamorphosis.broker.store.interfaces import IFsync
from metamorphosis.broker.store.syncloop import SyncLoop, SyncLoopStopped


@implementer(IFsync)
class ManualFsync:
    """
    An L{IFsync} whose fsyncs end when the test says.
    """

    roundsInThreads = 0

    def __init__(self):
        self.pending = []
        self.awake = 0

    def fsync(self, fd):
        d = Deferred()
        self.pending.append((fd, d))
        return d

    def fsyncThen(self, fd, done):
        self.fsync(fd).addBoth(done)

    def keepAwake(self):
        self.awake += 1

    def close(self):
        pass

    def finish(self, error=None):
        """
        End every fsync running now (with C{error}, or successfully).
        """
        pending, self.pending = self.pending, []
        for _, d in pending:
            if error is None:
                d.callback(None)
            else:
                d.errback(error)


class SyncLoopTests(SynchronousTestCase):
    def setUp(self):
        self.fsyncs = ManualFsync()
        self.events = []
        self.dirty = [3]
        self.loop = self.makeLoop()

    def makeLoop(self, firing=None):
        return SyncLoop(self.fsyncs, self.take, firing)

    def take(self):
        fds, self.dirty = self.dirty, [3]
        self.events.append("fsync %s" % (",".join(map(str, fds)),))
        return fds, lambda error: self.events.append(
            "after" if error is None else ("after", error.value))

    def request(self, name):
        d = self.loop.request()
        d.addCallbacks(lambda _: self.events.append(name),
                       lambda f: self.events.append((name, f.value)))
        return d

    def test_oneFsyncAnswersEveryRequestMadeBefore(self):
        """
        A round forces the files written so far, each once, and answers
        every request made before it started, in request order, after its
        fsyncs are all over.  The requests made while one socket read is
        handled start their round once it is: they share it.
        """
        self.dirty = [3, 4]
        with batchedWrites:
            self.request("a")
            self.request("b")
            self.assertEqual(self.fsyncs.pending, [])
        self.assertEqual([fd for fd, _ in self.fsyncs.pending], [3, 4])
        self.request("c")
        self.assertEqual(self.events, ["fsync 3,4"])
        self.fsyncs.pending.pop(0)[1].callback(None)
        self.assertEqual(self.events, ["fsync 3,4"])
        self.fsyncs.finish()
        self.assertEqual(self.events, ["fsync 3,4", "after", "a", "b", "fsync 3"])
        self.fsyncs.finish()
        self.assertEqual(self.events[5:], ["after", "c"])

    def test_requestDuringFsyncWaitsForTheNext(self):
        """
        A request made while a round runs (its write came after the round
        started) is answered only by the next round, which starts once the
        first round's requests are answered: their clients may send more
        meanwhile.
        """
        self.request("a")
        self.request("late")
        self.fsyncs.finish()
        self.assertEqual(self.events, ["fsync 3", "after", "a", "fsync 3"])
        self.fsyncs.finish()
        self.assertEqual(self.events[4:], ["after", "late"])

    def test_keepsTheDiskAwakeWhenIdle(self):
        """
        A round after which none starts (nothing more was asked for) asks
        the fsync provider to keep the disk awake for the next writes; one
        followed by another does not (that one's fsync is a request).
        """
        self.request("a")
        self.request("late")
        self.fsyncs.finish()
        self.assertEqual(self.fsyncs.awake, 0)
        self.fsyncs.finish()
        self.assertEqual((self.events[-1], self.fsyncs.awake), ("late", 1))

    def test_requestWhileAnsweringStartsOneRound(self):
        """
        A request made by an answer (a client's next put, written as its
        reply leaves) is covered by the round that starts once every answer
        of the round that ended is given, with the requests made before it:
        one round, not one per request.
        """
        def answered(_):
            self.events.append("a")
            self.request("b")
            self.request("c")

        self.loop.request().addCallback(answered)
        self.fsyncs.finish()
        self.assertEqual(self.events, ["fsync 3", "after", "a", "fsync 3"])
        self.assertEqual(len(self.fsyncs.pending), 1)
        self.fsyncs.finish()
        self.assertEqual(self.events[4:], ["after", "b", "c"])

    def test_stopWhileAnswering(self):
        """
        L{SyncLoop.stop} called by an answer fires once the requests made
        before it are answered too.
        """
        stopped = []

        def answered(_):
            self.request("b")
            self.loop.stop().addCallback(stopped.append)

        self.loop.request().addCallback(answered)
        self.fsyncs.finish()
        self.assertEqual(stopped, [])
        self.fsyncs.finish()
        self.assertEqual((self.events[-1], stopped), ("b", [None]))

    def test_failedFsyncFailsWhatItCovered(self):
        """
        A failed fsync fails every request its round covered, and only
        those: the next round answers the requests made after it.  The
        round's files are finished either way.
        """
        error = OSError(errno.EIO, "Input/output error")
        self.dirty = [3, 4]
        with batchedWrites:
            self.request("a")
            self.request("b")
        self.fsyncs.pending.pop(0)[1].callback(None)
        self.fsyncs.finish(error)
        self.assertEqual(self.events,
                         ["fsync 3,4", ("after", error), ("a", error), ("b", error)])
        self.request("c")
        self.fsyncs.finish()
        self.assertEqual(self.events[4:], ["fsync 3", "after", "c"])

    def test_requestThenWithoutDeferred(self):
        """
        L{SyncLoop.requestThen} calls its callable with L{None} once the
        round covering it is over, or with the failure of its fsync; what
        the round's C{after} writes meanwhile (a partition's queued puts)
        is covered by the next round, which starts after the answers.
        """
        results = []
        rounds = []

        def after(error):
            rounds.append(error)
            if len(rounds) == 1:
                loop.requestThen(results.append)

        loop = SyncLoop(self.fsyncs, lambda: ([3], after))
        loop.requestThen(results.append)
        self.assertEqual((results, len(self.fsyncs.pending)), ([], 1))
        self.fsyncs.finish()
        self.assertEqual(results, [None])
        self.assertEqual(len(self.fsyncs.pending), 1)
        error = OSError(errno.EIO, "Input/output error")
        self.fsyncs.finish(error)
        self.assertEqual(results[1].value, error)
        self.assertEqual(rounds[1].value, error)

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
        with batchedWrites:
            self.request("a")
            self.request("b")
        self.fsyncs.finish()
        self.assertEqual(self.events, ["fsync 3", "after", "enter", "a", "b", "exit"])

    def test_stopWaitsForTheRound(self):
        """
        C{stop} fires once the requests made are answered; later requests
        fail.
        """
        self.request("a")
        stopped = []
        self.loop.stop().addCallback(lambda _: self.events.append("stopped"))
        self.assertEqual(self.events, ["fsync 3"])
        self.fsyncs.finish()
        self.assertEqual(self.events, ["fsync 3", "after", "a", "stopped"])
        self.loop.request().addErrback(stopped.append)
        self.assertEqual(len(stopped), 1)
        stopped[0].trap(SyncLoopStopped)

    def test_stopBeforeTheBurstEnds(self):
        """
        A request waiting for the end of a socket read's handling keeps
        C{stop} waiting too.
        """
        stopped = []
        with batchedWrites:
            self.request("a")
            self.loop.stop().addCallback(stopped.append)
        self.assertEqual(stopped, [])
        self.fsyncs.finish()
        self.assertEqual(stopped, [None])
        self.assertEqual(self.events, ["fsync 3", "after", "a"])

    def test_stopWhenIdle(self):
        """
        A loop with no round running stops at once.
        """
        stopped = []
        self.loop.stop().addCallback(stopped.append)
        self.assertEqual(stopped, [None])
        self.assertEqual(self.fsyncs.pending, [])
