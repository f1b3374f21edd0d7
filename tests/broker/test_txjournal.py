"""
Tests for L{metamorphosis.broker.transactions.journal}.
"""

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from metamorphosis.broker.transactions.journal import (
    Checkpoints,
    CommitRecord,
    DoneRecord,
    HeuristicJournal,
    JournalLocation,
    PrepareRecord,
    PutRecord,
    RedoLog,
    RollbackRecord,
    decodeRecords,
    encodeRecord,
)
from tests.broker.txsupport import ImmediateReactor, ManualThreadPool, SyncThreadPool

keys = st.text(max_size=80)
records = st.one_of(
    st.builds(
        PutRecord,
        keys,
        st.integers(-(2**63), 2**63 - 1),
        st.text(max_size=30),
        st.integers(-(2**31), 2**31 - 1),
        st.integers(-(2**31), 2**31 - 1),
        st.binary(max_size=200),
    ),
    st.builds(PrepareRecord, keys),
    st.builds(DoneRecord, keys),
    st.builds(RollbackRecord, keys),
    st.builds(
        CommitRecord,
        keys,
        st.booleans(),
        st.lists(
            st.tuples(
                st.text(max_size=20),
                st.integers(0, 2**31 - 1),
                st.integers(0, 2**62),
            ),
            max_size=5,
        ).map(tuple),
    ),
)


class RecordCodecTests(SynchronousTestCase):
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(records, max_size=6))
    def test_roundTrip(self, values):
        """
        A sequence of encoded records decodes to the same records at the
        offsets where each one starts.
        """
        buffer = b"".join(encodeRecord(r) for r in values)
        decoded, end = decodeRecords(buffer)
        self.assertEqual([r for _, r in decoded], values)
        self.assertEqual(end, len(buffer))

    @settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(records, min_size=1, max_size=4), st.data())
    def test_tornTail(self, values, data):
        """
        A buffer cut anywhere inside its last record yields the complete
        records before it and ends where the torn one starts.
        """
        encoded = [encodeRecord(r) for r in values]
        whole = b"".join(encoded)
        lastStart = len(whole) - len(encoded[-1])
        cut = data.draw(st.integers(lastStart, len(whole) - 1))
        decoded, end = decodeRecords(whole[:cut])
        self.assertEqual([r for _, r in decoded], values[:-1])
        self.assertEqual(end, lastStart)

    @settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(records, st.data())
    def test_corruption(self, record, data):
        """
        A flipped byte makes the record invalid (its CRC or frame no longer
        matches) rather than decoding to something else.
        """
        encoded = bytearray(encodeRecord(record))
        at = data.draw(st.integers(0, len(encoded) - 1))
        encoded[at] ^= data.draw(st.integers(1, 255))
        decoded, end = decodeRecords(bytes(encoded))
        self.assertEqual((decoded, end), ([], 0))


class RedoLogTests(SynchronousTestCase):
    def setUp(self):
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.clock = Clock()

    def redoLog(self, fileSize=1 << 20):
        return RedoLog(
            self.directory, ImmediateReactor(self.clock), SyncThreadPool(), fileSize
        )

    def test_appendAndRecover(self):
        """
        Records appended (without any sync) are read back by a new log on
        the same directory, with their locations.
        """
        log = self.redoLog()
        self.assertEqual(log.recover(), [])
        first = log.append(PrepareRecord("XID:1:::q"))
        second = log.append(DoneRecord("TX:s:1"))
        self.assertEqual(first, JournalLocation(1, 0))
        recovered = self.redoLog().recover()
        self.assertEqual(
            recovered,
            [(first, PrepareRecord("XID:1:::q")), (second, DoneRecord("TX:s:1"))],
        )

    def test_truncatesTornTail(self):
        """
        Garbage after the last complete record is cut off at recovery, and
        new records follow the last valid one.
        """
        log = self.redoLog()
        log.recover()
        log.append(DoneRecord("a"))
        path = os.path.join(self.directory, "redo.1")
        valid = os.path.getsize(path)
        with open(path, "ab") as f:
            f.write(encodeRecord(DoneRecord("b"))[:-2])
        log = self.redoLog()
        self.assertEqual([r for _, r in log.recover()], [DoneRecord("a")])
        self.assertEqual(os.path.getsize(path), valid)
        log.append(DoneRecord("c"))
        self.assertEqual(
            [r for _, r in self.redoLog().recover()], [DoneRecord("a"), DoneRecord("c")]
        )

    def test_rotationAndStart(self):
        """
        Records go to a new file once the current one reaches the size
        limit; recovery from a location skips what precedes it.
        """
        log = self.redoLog(fileSize=10)
        log.recover()
        locations = [log.append(DoneRecord(str(i))) for i in range(3)]
        self.assertEqual([location.number for location in locations], [1, 2, 3])
        self.assertEqual(log.numbers(), [1, 2, 3])
        recovered = self.redoLog(fileSize=10).recover(locations[1])
        self.assertEqual([r for _, r in recovered], [DoneRecord("1"), DoneRecord("2")])
        log.deleteBefore(3)
        self.assertEqual(log.numbers(), [3])

    def test_rotationDuringSync(self):
        """
        A file retired while a sync of it runs in a thread is closed only by
        a sync, after being forced.
        """
        pool = ManualThreadPool()
        log = RedoLog(self.directory, ImmediateReactor(self.clock), pool, fileSize=10)
        log.recover()
        log.append(DoneRecord("a"))
        results = []
        log.sync().addCallback(results.append)
        log.append(DoneRecord("b"))
        log.append(DoneRecord("c"))
        while pool.pending:
            pool.runOne()
        self.assertEqual(results, [None])
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(
            [r for _, r in self.redoLog().recover()],
            [DoneRecord("a"), DoneRecord("b"), DoneRecord("c")],
        )
        self.assertFalse(log.dirty)

    def test_syncCoalesces(self):
        """
        C{sync} fires its Deferreds once the records are forced.
        """
        log = self.redoLog()
        log.recover()
        log.append(DoneRecord("a"))
        self.assertTrue(log.dirty)
        results = []
        log.sync().addCallback(results.append)
        log.sync().addCallback(results.append)
        self.assertEqual(results, [None, None])
        self.assertFalse(log.dirty)


class SmallFilesTests(SynchronousTestCase):
    def setUp(self):
        self.directory = self.mktemp()
        os.makedirs(self.directory)

    def test_checkpoints(self):
        """
        The newest checkpoint wins; only C{maxCheckpoints} files are kept.
        """
        checkpoints = Checkpoints(self.directory, maxCheckpoints=2)
        self.assertIsNone(checkpoints.latest())
        for offset in range(4):
            checkpoints.write(JournalLocation(1, offset))
        self.assertEqual(checkpoints.latest(), JournalLocation(1, 3))
        self.assertEqual(
            sorted(n for n in os.listdir(self.directory) if n.startswith("checkpoint.")),
            ["checkpoint.3", "checkpoint.4"],
        )

    def test_brokenCheckpointIgnored(self):
        """
        An unreadable newest checkpoint falls back to the previous one.
        """
        checkpoints = Checkpoints(self.directory)
        checkpoints.write(JournalLocation(2, 7))
        with open(os.path.join(self.directory, "checkpoint.2"), "wb") as f:
            f.write(b"{")
        self.assertEqual(checkpoints.latest(), JournalLocation(2, 7))

    def test_heuristicJournal(self):
        journal = HeuristicJournal(self.directory)
        self.assertEqual(journal.load(), [])
        journal.save([("XID:1:01:02:q", "q", 4), ("XID:1:01:03:q", "q", 6)])
        self.assertEqual(
            HeuristicJournal(self.directory).load(),
            [("XID:1:01:02:q", "q", 4), ("XID:1:01:03:q", "q", 6)],
        )
