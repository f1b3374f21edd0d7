"""
Background verification of stored records (docs/disk-faults.md).

Only the last segment of a partition is checked at start; a record that
rots later, or in an older segment, would be sent to consumers as it is.
L{SegmentVerifier} reads every sealed segment once per pass, in a thread of
its own and at a bounded byte rate, checks every record with
L{metamorphosis.broker.store.verify.scanRecords}, and tells the store of
each damaged range it finds: the broker then never serves that range and
moves consumers past it.  A segment a consumer had trouble with (it asked
for its offset again, as clients do after a bad checksum) is verified
first, the active one up to its flushed end included.
"""

import threading
import time
from collections import deque

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from metamorphosis.broker.store.verify import Stopped, scanRecords

#: Seconds between two looks for segments sealed since the last one.
IDLE_POLL = 10.0

#: A segment verified this recently is not verified again on suspicion.
RECHECK_AFTER = 60.0


class _Throttle:
    """
    Called by the scan with each read's size: sleeps so that reads stay
    under C{rate} bytes per second, and ends the scan when stopped.
    """

    def __init__(self, rate, stopped):
        self._rate = rate
        self._stopped = stopped
        self.bytes = 0

    def __call__(self, count):
        self.bytes += count
        delay = count / self._rate
        while delay > 0:
            if self._stopped():
                raise Stopped()
            time.sleep(min(delay, 0.1))
            delay -= 0.1
        if self._stopped():
            raise Stopped()


def _inDaemonThread(reactor, f, *args, **kwargs):
    """
    Run C{f} in a thread of its own that never keeps the process alive (a
    scan may sleep for its rate limit when the broker exits).

    @return: a Deferred of its result.
    """
    d = Deferred()

    def run():
        try:
            result = f(*args, **kwargs)
        except BaseException:
            reactor.callFromThread(d.errback, Failure())
        else:
            reactor.callFromThread(d.callback, result)

    threading.Thread(target=run, name="metaq-verify", daemon=True).start()
    return d


class SegmentVerifier:
    """
    Verify the segments of every store of a L{MessageStoreManager}.

    @param bytesPerSecond: the read rate; 0 verifies nothing in the
        background (suspected segments still are, at 8 MiB/s).
    @param passInterval: seconds after which a verified segment is verified
        again.
    """

    log = Logger()

    def __init__(self, manager, bytesPerSecond, passInterval, reactor):
        self._manager = manager
        self._rate = bytesPerSecond
        self._passInterval = passInterval
        self._reactor = reactor
        self._urgent = deque()
        self._verifiedAt = {}
        self._wake = None
        self._stopping = False
        self._done = None
        self.segmentsVerified = 0
        self.bytesVerified = 0

    def start(self):
        self._done = ensureDeferred(self._run())
        self._done.addErrback(lambda f: self.log.failure("Segment verification stopped", f))

    def stop(self):
        """
        End the current scan at its next read, and the loop.

        @return: a Deferred firing once the scan has ended.
        """
        self._stopping = True
        self._poke()
        return self._done if self._done is not None else succeed(None)

    def suspect(self, store, offset):
        """
        A consumer had trouble at C{offset} of C{store}: verify the segment
        holding it next, unless it was verified in the last minute.
        """
        segments = store.segments
        segment = next((s for s in reversed(segments) if s.start <= offset), None)
        if segment is None or segment.file is None:
            return
        key = (store.topic, store.partition, segment.start)
        verified = self._verifiedAt.get(key)
        if verified is not None and self._reactor.seconds() - verified[0] < RECHECK_AFTER:
            return
        if any(k == key for k, _, _ in self._urgent):
            return
        self._urgent.append((key, store, segment))
        self._poke()

    def _poke(self):
        if self._wake is not None and not self._wake.called:
            self._wake.callback(None)

    def _sleep(self, seconds):
        """
        Wait for L{suspect} or L{stop}, and at most C{seconds} unless that
        is L{None}.
        """
        self._wake = Deferred()
        if seconds is None:
            return self._wake
        call = self._reactor.callLater(seconds, self._poke)
        d = self._wake

        def cancel(result):
            if call.active():
                call.cancel()
            return result

        return d.addBoth(cancel)

    def _next(self):
        """
        The next C{(key, store, segment, end)} to verify, or L{None}.
        """
        while self._urgent:
            key, store, segment = self._urgent.popleft()
            if self._manager.getStore(store.topic, store.partition) is store:
                end = min(segment.written, store.maxOffset - segment.start)
                if end > 0:
                    return key, store, segment, end
        if self._rate <= 0:
            return None
        now = self._reactor.seconds()
        for topic, partition, store in self._manager.stores():
            for segment in store.segments[:-1]:
                key = (topic, partition, segment.start)
                verified = self._verifiedAt.get(key)
                if verified is None or (now - verified[0] >= self._passInterval
                                        or verified[1] < segment.written):
                    return key, store, segment, segment.written
        return None

    async def _run(self):
        while not self._stopping:
            work = self._next()
            if work is None:
                await self._sleep(IDLE_POLL if self._rate > 0 else None)
                continue
            key, store, segment, end = work
            rate = self._rate if self._rate > 0 else 8 << 20
            throttle = _Throttle(rate, lambda: self._stopping)
            try:
                result = await _inDaemonThread(
                    self._reactor, scanRecords, segment.file.fileno(), end, 0,
                    throttle=throttle,
                )
            except Stopped:
                return
            except OSError as e:
                self.log.error("Cannot verify {path}: {error}", path=segment.path, error=str(e))
                self._verifiedAt[key] = (self._reactor.seconds(), end)
                continue
            self._verifiedAt[key] = (self._reactor.seconds(), end)
            self.segmentsVerified += 1
            self.bytesVerified += throttle.bytes
            self._report(store, segment, result, end)

    def _report(self, store, segment, result, end):
        ranges = [(d.start, d.end, d.reason) for d in result.damaged]
        if result.tornAt is not None:
            ranges.append((result.tornAt, end, "incomplete record"))
        for start, stop, reason in ranges:
            if store.markDamaged(segment.start + start, segment.start + stop, reason):
                self.log.error(
                    "Damaged records in {path}: {length} byte(s) from offset {offset} "
                    "({reason}) are no longer served; consumers move on to offset {next}",
                    path=segment.path, length=stop - start, offset=segment.start + start,
                    reason=reason, next=segment.start + stop,
                )
