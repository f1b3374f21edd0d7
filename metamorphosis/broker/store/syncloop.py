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
(L{metamorphosis.broker.store.partition.batchedWrites}) starts its round
once the read is handled, so the requests of one read share a round.

The transaction journal uses it; a partition's group commit
(L{metamorphosis.broker.store.partition.MessageStore}) runs the same rounds
woven into its write jobs.
"""

from contextlib import nullcontext

from twisted.internet.defer import Deferred, FirstError, fail, gatherResults, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from metamorphosis.broker.store.partition import batchedWrites


class SyncLoopStopped(Exception):
    """
    A sync was requested after the loop was stopped.
    """


class SyncLoop:
    """
    Forces what was written on the reactor thread, for every request made
    while the previous round ran at once.  Reactor thread only.

    @ivar fsync: the L{metamorphosis.broker.store.interfaces.IFsync} that
        forces each file; its owner may replace it before the first request
        (the broker's is chosen when its store manager starts).
    @param take: called when a round starts; returns C{(fds, after)}: the
        descriptors of the files written since the last round, and a
        callable run once their fsyncs are over, whatever their outcome
        (the journal closes the files it retired there).
    @param firing: returns a context manager entered while the requests one
        round covers are fired, so that what their callbacks do can be done
        together (the journal enters
        L{metamorphosis.broker.store.partition.batchedWrites}: the commits
        one round acknowledges append to their partitions with one write).
    """

    log = Logger()

    def __init__(self, fsync, take, firing=None):
        self.fsync = fsync
        self._take = take
        self._firing = firing
        self._running = False
        self._startsAfterBurst = False
        self._stopping = False
        # The Deferreds of the requests in request order (a running round
        # covers the first ones), and those of stop().
        self._waiting = []
        self._stopped = []

    def request(self):
        """
        Ask for everything written so far to be forced.

        @return: a Deferred firing with L{None} once it is, or failing with
            the error of the fsync that covered it.
        """
        if self._stopping:
            return fail(SyncLoopStopped("the sync loop is stopped"))
        d = Deferred()
        self._waiting.append(d)
        if not self._running and not self._startsAfterBurst:
            if batchedWrites.depth:
                self._startsAfterBurst = True
                batchedWrites.later(self._burstOver)
            else:
                self._startRound()
        return d

    def _burstOver(self):
        self._startsAfterBurst = False
        if not self._running and self._waiting:
            self._startRound()

    def stop(self):
        """
        Take no more requests.

        @return: a Deferred firing once every request made is answered.
        """
        self._stopping = True
        if not self._running and not self._startsAfterBurst:
            return succeed(None)
        d = Deferred()
        self._stopped.append(d)
        return d

    def _startRound(self):
        self._running = True
        covered = len(self._waiting)
        fds, after = self._take()
        d = gatherResults([self.fsync.fsync(fd) for fd in fds], consumeErrors=True)
        d.addBoth(self._roundOver, covered, after)

    def _roundOver(self, result, covered, after):
        """
        The fsyncs of the round that covers the first C{covered} requests
        waiting are over: start the next round if more was asked for, then fire
        (or fail) the requests this one covered, together.
        """
        try:
            after()
        except Exception:
            self.log.failure("Finishing an fsync round failed")
        error = None
        if isinstance(result, Failure):
            error = result.value.subFailure if result.check(FirstError) else result
        answered, self._waiting = self._waiting[:covered], self._waiting[covered:]
        self._running = False
        if self._waiting:
            self._startRound()
        with self._firing() if self._firing is not None else nullcontext():
            for d in answered:
                if error is None:
                    d.callback(None)
                else:
                    d.errback(error)
        if not self._running and not self._startsAfterBurst and self._stopped:
            stopped, self._stopped = self._stopped, []
            for d in stopped:
                d.callback(None)
