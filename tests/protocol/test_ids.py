"""
Tests for L{metamorphosis.protocol.ids}.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from metamorphosis.protocol.ids import (
    IdWorker,
    InvalidSystemClock,
    decomposeId,
    makeId,
    monotonicMillis,
)


class FakeClock:
    def __init__(self, *times):
        self.times = list(times)

    def __call__(self):
        if len(self.times) > 1:
            return self.times.pop(0)
        return self.times[0]


class IdWorkerTests(SynchronousTestCase):
    def test_workedExamples(self):
        """
        Ids as Java's C{IdWorker} makes them.
        """
        self.assertEqual(IdWorker(0, FakeClock(86400000)).nextId(), -5468572396564774912)
        self.assertEqual(makeId(86400000, 1, 5), -5468572396564770811)
        self.assertEqual(makeId(1357000000000, 0, 0), 222735743569625088)

    def test_javaVerified(self):
        """
        Worker 3 on a host up for 469808 ms (run of the Java class).
        """
        worker = IdWorker(3, FakeClock(469808))
        self.assertEqual(worker.nextId(), -5468932813912788992)
        self.assertEqual(worker.nextId(), -5468932813912788991)

    def test_monotonicClockGivesNegativeIds(self):
        self.assertLess(IdWorker(1).nextId(), 0)
        self.assertLess(monotonicMillis(), 1303895660503)

    def test_sequenceResetsEachMillisecond(self):
        worker = IdWorker(2, FakeClock(1000, 1000, 1001))
        ids = [worker.nextId() for _ in range(3)]
        self.assertEqual([decomposeId(i) for i in ids], [(1000, 2, 0), (1000, 2, 1), (1001, 2, 0)])

    def test_sequenceWrapWaitsForNextMillisecond(self):
        clock = FakeClock(*([5] * 4097 + [5, 5, 6]))
        worker = IdWorker(0, clock)
        ids = [worker.nextId() for _ in range(4097)]
        self.assertEqual(decomposeId(ids[4095]), (5, 0, 4095))
        self.assertEqual(decomposeId(ids[4096]), (6, 0, 0))
        self.assertEqual(ids, sorted(set(ids)))

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 1000)), min_size=1, max_size=4),
           st.integers(0, 1023))
    def test_nextIdsAsOneByOne(self, steps, workerId):
        """
        C{nextIds(n)} gives what C{n} calls of C{nextId} give while the
        clock does not move, and leaves the worker where they leave it
        (batches in the same millisecond go on from each other).
        """
        now = [1000]

        def clock():
            return now[0]

        batched, single = IdWorker(workerId, clock), IdWorker(workerId, clock)
        for advance, count in steps:
            now[0] += advance
            got = list(batched.nextIds(count))
            self.assertEqual(got, [single.nextId() for _ in range(count)])
            self.assertEqual(got, sorted(set(got)))
        self.assertEqual(batched.nextId(), single.nextId())

    def test_nextIdsWait(self):
        """
        When the millisecond's sequence runs out, the ids go on in the
        next millisecond, as nextId's do.
        """
        worker = IdWorker(0, FakeClock(*([5] * 4097 + [6])))
        ids = list(worker.nextIds(4097))
        self.assertEqual([decomposeId(i) for i in (ids[0], ids[4095], ids[4096])],
                         [(5, 0, 0), (5, 0, 4095), (6, 0, 0)])

    def test_nextIdsClockBackwards(self):
        worker = IdWorker(0, FakeClock(10, 9))
        worker.nextId()
        self.assertRaises(InvalidSystemClock, worker.nextIds, 2)

    def test_clockBackwards(self):
        worker = IdWorker(0, FakeClock(10, 9))
        worker.nextId()
        self.assertRaises(InvalidSystemClock, worker.nextId)

    def test_workerRange(self):
        self.assertRaises(ValueError, IdWorker, 1024)
        self.assertRaises(ValueError, IdWorker, -1)
        IdWorker(1023)

    def test_increasing(self):
        worker = IdWorker(9)
        ids = [worker.nextId() for _ in range(10000)]
        self.assertEqual(ids, sorted(set(ids)))

    @settings(max_examples=100, deadline=None)
    @given(
        st.integers(min_value=0, max_value=1303895660503 + (1 << 41) - 1),
        st.integers(min_value=0, max_value=1023),
        st.integers(min_value=0, max_value=4095),
    )
    def test_decompose(self, timestamp, workerId, sequence):
        msgId = makeId(timestamp, workerId, sequence)
        self.assertTrue(-(1 << 63) <= msgId < (1 << 63))
        self.assertEqual(decomposeId(msgId), (timestamp, workerId, sequence))

    @settings(max_examples=100, deadline=None)
    @given(
        st.integers(min_value=0, max_value=1303895660503 + (1 << 41) - 1),
        st.integers(min_value=0, max_value=1023),
        st.integers(min_value=1, max_value=5),
    )
    def test_nextIdIsMakeId(self, timestamp, workerId, count):
        """
        L{IdWorker.nextId} composes its ids as L{makeId} does (it has the
        computation inline).
        """
        worker = IdWorker(workerId, FakeClock(*[timestamp] * count))
        self.assertEqual([worker.nextId() for _ in range(count)],
                         [makeId(timestamp, workerId, sequence) for sequence in range(count)])
