"""
Group commit for a file written on the reactor thread: one fsync loop in a
pool thread (docs/storage.md, docs/transactions.md).

The writer writes its records on the reactor thread and then asks the loop
for a sync (L{SyncLoop.request}).  The loop runs in a pool thread for as
long as it is asked for more: each round takes the number of requests made
so far, forces the file(s) (its C{force} callable) and wakes the reactor
once, which fires every request that round covers.  A request is thus
acknowledged only by an fsync that started after the request was made (so
after its records were written), requests made while an fsync runs share
the next one, and a failed fsync fails every request it covered.

The partition's loop (L{metamorphosis.broker.store.partition.MessageStore},
C{_syncLoop}) works the same way with its write jobs woven in; the
transaction journal uses this one.
"""

import threading
import time
from contextlib import nullcontext

from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

#: The loop gives its pool thread back after running this long (and queues
#: itself again), so that busy loops cannot hold every thread of the pool.
SYNC_LOOP_SECONDS = 0.05


class SyncLoopStopped(Exception):
    """
    A sync was requested after the loop was stopped.
    """


class SyncLoop:
    """
    Forces what was written on the reactor thread, for every request made
    while the previous fsync ran at once.

    @param force: called in the loop's thread once per round; makes
        everything written before the call durable, or raises.
    @param firing: returns a context manager entered (on the reactor
        thread) while the requests one round covers are fired, so that what
        their callbacks do can be done together (the journal enters
        L{metamorphosis.broker.store.partition.batchedWrites}: the commits
        one fsync acknowledges append to their partitions with one write).
    @ivar idleSeconds: how long the loop waits for the next request before
        it gives its thread back: a producer waiting for its reply sends
        the next request soon, and waiting here costs less than handing
        the loop to the pool again.
    """

    log = Logger()
    idleSeconds = 0.002

    def __init__(self, reactor, threadPool, force, firing=None):
        self._reactor = reactor
        self._threadPool = threadPool
        self._force = force
        self._firing = firing
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        # Guarded by the lock: requests made, requests covered by a
        # completed round, whether the loop runs, whether it must stop.
        self._requested = 0
        self._completed = 0
        self._running = False
        self._stopping = False
        # Reactor thread only: (ticket, Deferred) in request order, and
        # the Deferreds of stop().
        self._waiting = []
        self._stopped = []

    def request(self):
        """
        Ask for everything written so far to be forced.

        @return: a Deferred firing with L{None} once it is, or failing with
            the error of the fsync that covered it.
        """
        d = Deferred()
        with self._lock:
            if self._stopping:
                return fail(SyncLoopStopped("the sync loop is stopped"))
            self._requested += 1
            self._waiting.append((self._requested, d))
            start = not self._running
            self._running = True
            if not start:
                self._wake.notify()
        if start:
            self._threadPool.callInThreadWithCallback(self._loopEnded, self._loop)
        return d

    def stop(self):
        """
        Take no more requests.

        @return: a Deferred firing once every request made is answered and
            the loop has left its thread.
        """
        d = Deferred()
        with self._lock:
            self._stopping = True
            running = self._running
            self._wake.notify()
        if running:
            self._stopped.append(d)
        else:
            d.callback(None)
        return d

    def _loop(self):
        """
        In a pool thread: force until every request is covered.
        """
        until = time.monotonic() + SYNC_LOOP_SECONDS
        while True:
            with self._lock:
                if (self._requested == self._completed and self.idleSeconds > 0
                        and not self._stopping):
                    self._wake.wait(min(self.idleSeconds, max(0, until - time.monotonic())))
                ticket = self._requested
                if ticket == self._completed:
                    self._running = False
                    if self._stopping:
                        self._reactor.callFromThread(self._loopStopped)
                    return
                if time.monotonic() > until:
                    # Back to the end of the pool's queue; still running.
                    self._threadPool.callInThreadWithCallback(self._loopEnded, self._loop)
                    return
            error = None
            try:
                self._force()
            except Exception:
                error = Failure()
            with self._lock:
                self._completed = ticket
            self._reactor.callFromThread(self._synced, ticket, error)

    def _loopEnded(self, succeeded, result):
        # In the pool thread; the loop catches what force raises.
        if not succeeded:
            self.log.failure("The fsync loop failed", result)

    def _synced(self, ticket, error):
        """
        On the reactor thread: the round up to C{ticket} is over; fire (or
        fail) every request it covered, together.
        """
        done = 0
        while done < len(self._waiting) and self._waiting[done][0] <= ticket:
            done += 1
        covered, self._waiting = self._waiting[:done], self._waiting[done:]
        with self._firing() if self._firing is not None else nullcontext():
            for _, d in covered:
                if error is None:
                    d.callback(None)
                else:
                    d.errback(error)

    def _loopStopped(self):
        stopped, self._stopped = self._stopped, []
        for d in stopped:
            d.callback(None)
