"""
Group commit for files written on the reactor thread, in rounds of fsyncs
(docs/storage.md, docs/transactions.md).

The writer writes its records on the reactor thread and then asks for a
sync (L{SyncLoop.request}).  One round runs at a time: it takes the files
written so far (its C{take} callable), has each forced by an
L{metamorphosis.broker.store.interfaces.IFsync} (by default the kernel's
asynchronous fsync, so no thread is woken), and once they all are, fires
every request made before the round started.  A request is thus
acknowledged only by an fsync that started after its records were written;
requests made while a round runs share the next one, which starts as soon
as that one is over (before its requests are answered, so that the disk
works while the answers go out); and a failed fsync fails every request its
round covered.  A request made while the broker handles one socket read
(L{metamorphosis.broker.store.bursts.batchedWrites}) starts its round
once the read is handled, so the requests of one read share a round.

A partition's group commit
(L{metamorphosis.broker.store.partition.MessageStore}) and the transaction
journal use it.  A partition takes no Deferred per round or per request
(L{SyncLoop.requestThen}), since its rounds are on every put's path, and
writes the puts that arrived during a round before the next one starts
(the C{after} callable of its C{take}).
"""

from contextlib import nullcontext

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from metamorphosis.broker.store.bursts import batchedWrites
from metamorphosis.broker.store.fsync import deferredOutcome


class SyncLoopStopped(Exception):
    """
    A sync was requested after the loop was stopped.
    """


class _Round:
    """
    The fsyncs of one round: how many requests it covers (the first ones
    waiting), how many fsyncs are still running, and the first error.
    Called with the result of each fsync.
    """

    __slots__ = ("loop", "covered", "after", "running", "error")

    def __init__(self, loop, covered, after, running):
        self.loop = loop
        self.covered = covered
        self.after = after
        self.running = running
        self.error = None

    def __call__(self, result):
        if result is not None and self.error is None:
            self.error = result
        self.running -= 1
        if not self.running:
            self.loop._roundOver(self)


class SyncLoop:
    """
    Forces what was written on the reactor thread, for every request made
    while the previous round ran at once.  Reactor thread only.

    @ivar fsync: the L{metamorphosis.broker.store.interfaces.IFsync} that
        forces each file; its owner may replace it before the first request
        (the broker's is chosen when its store manager starts).
    @param take: called when a round starts; returns C{(fds, after)}: the
        descriptors of the files written since the last round, and a
        callable run with the round's error (a L{Failure}, or L{None})
        once their fsyncs are over, before the next round starts and
        before any request is answered (the journal closes the files it
        retired there; a partition writes the puts that arrived meanwhile,
        so that the next round covers them).
    @param firing: returns a context manager entered while the requests one
        round covers are answered, so that what their callbacks do can be
        done together (the journal enters
        L{metamorphosis.broker.store.bursts.batchedWrites}: the commits
        one round acknowledges append to their partitions with one write; a
        partition enters
        L{metamorphosis.broker.store.bursts.acknowledging}).
    """

    log = Logger()

    def __init__(self, fsync, take, firing=None):
        self.fsync = fsync
        self._take = take
        self._firing = firing
        self._running = False
        # A round is to start once the socket read being handled is (a
        # burst: its requests share the round), or once the answers of the
        # round that just ended are given (_roundOver).
        self._startsLater = False
        self._stopping = False
        # The callables of the requests in request order (a running round
        # covers the first ones), and the Deferreds of stop().
        self._waiting = []
        self._stopped = []

    @property
    def busy(self):
        """
        Whether a round runs, or starts once the socket read being handled
        is, or once the round that ended is answered: a request made now is
        answered by the round after it.
        """
        return self._running or self._startsLater

    def request(self):
        """
        Ask for everything written so far to be forced.

        @return: a Deferred firing with L{None} once it is, or failing with
            the error of the fsync that covered it.
        """
        return deferredOutcome(self.requestThen)

    def requestThen(self, done):
        """
        L{request} without a Deferred: C{done} is called with L{None} once
        everything written so far is forced, or with the L{Failure} of the
        fsync that covered it.  It must not raise.
        """
        if self._stopping:
            done(Failure(SyncLoopStopped("the sync loop is stopped")))
            return
        self._waiting.append(done)
        if not self._running and not self._startsLater:
            if batchedWrites.depth:
                self._startsLater = True
                batchedWrites.later(self._burstOver)
            else:
                self._startRound()

    def _burstOver(self):
        self._startsLater = False
        if not self._running and self._waiting:
            self._startRound()

    def stop(self):
        """
        Take no more requests.

        @return: a Deferred firing once every request made is answered.
        """
        self._stopping = True
        if not self._running and not self._startsLater:
            return succeed(None)
        d = Deferred()
        self._stopped.append(d)
        return d

    def _startRound(self):
        self._running = True
        fds, after = self._take()
        round = _Round(self, len(self._waiting), after, len(fds))
        if not fds:
            self._roundOver(round)
            return
        for fd in fds:
            self.fsync.fsyncThen(fd, round)

    def _roundOver(self, round):
        """
        The fsyncs of C{round} are over: answer the requests this one
        covered, together, then start the next round if more was asked for.

        Answered first: a client with requests in flight (a Java producer's
        ten threads on one connection) sends its next ones once it has
        these answers, while the round started now would only hold them
        back by the time its writes and its fsync's submission take.
        Beside the real Java client, group commit with ten puts in flight
        went from a median of 16,468 puts a second to 17,226 (ten
        alternating runs each, eight of the ten pairs faster; a sync pair
        did not change: docs/performance.md).  What C{after} wrote (the
        puts that arrived meanwhile) is still covered by the next round,
        and the requests made while answering wait for it too.
        """
        error = round.error
        try:
            round.after(error)
        except Exception:
            self.log.failure("Finishing an fsync round failed")
        answered = self._waiting
        if round.covered == len(answered):
            self._waiting = []
        else:
            answered, self._waiting = answered[:round.covered], answered[round.covered:]
        self._running = False
        self._startsLater = True
        try:
            with self._firing() if self._firing is not None else nullcontext():
                for done in answered:
                    try:
                        done(error)
                    except Exception:
                        self.log.failure("Answering an fsync request failed")
        finally:
            self._startsLater = False
        if self._waiting:
            self._startRound()
        else:
            # The disk waits for the next round's writes now.
            self.fsync.keepAwake()
        if not self._running and self._stopped:
            stopped, self._stopped = self._stopped, []
            for d in stopped:
                d.callback(None)
