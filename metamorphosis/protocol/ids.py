"""
Message ids: the broker's Snowflake-style generator (Java C{IdWorker},
docs/storage.md).

MetaQ 1.4.5 and later take the timestamp from C{System.nanoTime()}, which on
Linux is C{CLOCK_MONOTONIC}: milliseconds since boot, far below the
generator's epoch, so every id is a negative signed 64-bit number.  We use the
same clock so that ids from this broker look like a Java broker's.
"""

import threading
import time

TWEPOCH = 1303895660503
WORKER_ID_BITS = 10
SEQUENCE_BITS = 12
MAX_WORKER_ID = (1 << WORKER_ID_BITS) - 1
SEQUENCE_MASK = (1 << SEQUENCE_BITS) - 1
WORKER_ID_SHIFT = SEQUENCE_BITS
TIMESTAMP_SHIFT = SEQUENCE_BITS + WORKER_ID_BITS


class InvalidSystemClock(Exception):
    """
    The clock went backwards; no id can be produced (the put fails).
    """


def monotonicMillis():
    """
    Milliseconds of C{CLOCK_MONOTONIC}, the clock of Java's C{nanoTime()}.
    """
    return time.monotonic_ns() // 1000000


_HALF = 1 << 63
_FULL = 1 << 64


def _signed64(value):
    return ((value + _HALF) % _FULL) - _HALF


def makeId(timestamp, workerId, sequence):
    """
    Compose an id from its parts, wrapped to a signed 64-bit integer.
    """
    return _signed64(
        ((timestamp - TWEPOCH) << TIMESTAMP_SHIFT)
        | (workerId << WORKER_ID_SHIFT)
        | sequence
    )


def decomposeId(msgId):
    """
    Split an id into C{(timestamp, workerId, sequence)}.
    """
    return (
        (msgId >> TIMESTAMP_SHIFT) + TWEPOCH,
        (msgId >> WORKER_ID_SHIFT) & MAX_WORKER_ID,
        msgId & SEQUENCE_MASK,
    )


class IdWorker:
    """
    Generates strictly increasing ids for one worker (the broker id).

    Thread-safe: the transaction and replication code may ask for ids from
    a thread pool.

    @param clock: a callable returning integer milliseconds; defaults to
        L{monotonicMillis}.
    """

    def __init__(self, workerId, clock=None):
        if not 0 <= workerId <= MAX_WORKER_ID:
            raise ValueError(
                "worker Id can't be greater than %d or less than 0" % (MAX_WORKER_ID,)
            )
        self.workerId = workerId
        self._workerBits = workerId << WORKER_ID_SHIFT
        self._clock = clock or monotonicMillis
        self._lock = threading.Lock()
        self._lastTimestamp = -1
        self._sequence = 0

    def _checkClock(self, timestamp):
        if timestamp < self._lastTimestamp:
            raise InvalidSystemClock(
                "Clock moved backwards.  Refusing to generate id for %d milliseconds"
                % (self._lastTimestamp - timestamp,)
            )

    def nextIds(self, count):
        """
        C{count} ids, the ones as many L{nextId} calls in a row would give
        while the clock stays in one millisecond, for the clock read once:
        what the puts of one read ask for.

        @return: a sequence of them, in increasing order.
        """
        with self._lock:
            timestamp = self._clock()
            self._checkClock(timestamp)
            first = self._sequence + 1 if timestamp == self._lastTimestamp else 0
            end = first + count
            if end <= SEQUENCE_MASK + 1:
                self._sequence = end - 1
                self._lastTimestamp = timestamp
                # The sequence is the low bits, which are zero in the rest:
                # the signed ids of one millisecond are consecutive.
                base = ((((timestamp - TWEPOCH) << TIMESTAMP_SHIFT) | self._workerBits) + _HALF) % _FULL - _HALF
                return range(base + first, base + end)
        # The millisecond's sequence runs out: one at a time, as nextId waits.
        return [self.nextId() for _ in range(count)]

    def nextId(self):
        with self._lock:
            timestamp = self._clock()
            self._checkClock(timestamp)
            if timestamp == self._lastTimestamp:
                self._sequence = (self._sequence + 1) & SEQUENCE_MASK
                if self._sequence == 0:
                    while timestamp <= self._lastTimestamp:
                        timestamp = self._clock()
            else:
                self._sequence = 0
            self._lastTimestamp = timestamp
            # makeId, inline: every put asks for an id.
            value = ((timestamp - TWEPOCH) << TIMESTAMP_SHIFT) | self._workerBits | self._sequence
            return ((value + _HALF) % _FULL) - _HALF
