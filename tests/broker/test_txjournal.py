"""
Tests for L{metamorphosis.broker.transactions.journal}.
"""

import os
import struct
import zlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from metamorphosis.broker.transactions import journal
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
from metamorphosis.ratelog import RateLimitedLog
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
    def test_layout(self):
        """
        The bytes of each record type, as docs/transactions.md lays them
        out: length, CRC-32 of the payload, type, then the fields
        big-endian, strings as uint16 length and UTF-8.
        """
        def framed(payload):
            return struct.pack(">II", len(payload), zlib.crc32(payload)) + payload

        self.assertEqual(
            encodeRecord(PutRecord("TX:s:1", -2, "t\u00e9", 3, -4, b"data")),
            framed(b"\x01\x00\x06TX:s:1" + struct.pack(">q", -2) + b"\x00\x03t\xc3\xa9"
                   + struct.pack(">iiI", 3, -4, 4) + b"data"))
        self.assertEqual(
            encodeRecord(CommitRecord("k", True, (("a", 1, 2), ("bc", -1, 2**40)))),
            framed(b"\x03\x00\x01k\x01\x00\x02" + b"\x00\x01a" + struct.pack(">iq", 1, 2)
                   + b"\x00\x02bc" + struct.pack(">iq", -1, 2**40)))
        for record, kind in [(PrepareRecord("k"), 2), (DoneRecord("k"), 4),
                             (RollbackRecord("k"), 5)]:
            self.assertEqual(encodeRecord(record), framed(bytes([kind]) + b"\x00\x01k"))

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


def openFiles(path):
    """
    How many descriptors of this process are open on C{path}.
    """
    path = os.path.realpath(path)
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink("/proc/self/fd/" + fd) == path
        except OSError:
            pass
    return count


class ZerosAheadTests(SynchronousTestCase):
    """
    The zeros a redo log keeps ahead of its records.
    """

    def setUp(self):
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.clock = Clock()
        self.path = os.path.join(self.directory, "redo.1")
        # Each test hears of its own failures whatever others said.
        self.patch(journal, "zeroErrors", RateLimitedLog(journal.log))

    def redoLog(self, pool=None, preallocate=1000, fileSize=1 << 20):
        return RedoLog(self.directory, ImmediateReactor(self.clock), pool or SyncThreadPool(),
                       fileSize, preallocate=preallocate)

    def test_recoveredOver(self):
        """
        Zeros follow the records on disk; recovery reads up to them without
        cutting anything, and the next records go right after the last one.
        """
        log = self.redoLog()
        log.recover()
        first = log.append(DoneRecord("a"))
        end = len(encodeRecord(DoneRecord("a")))
        size = os.path.getsize(self.path)
        # Half a preallocation past the records, then a whole one.
        self.assertEqual(size, end + 500 + 1000)
        with open(self.path, "rb") as f:
            self.assertFalse(any(f.read()[end:]))
        with capturedLogs() as events:
            log = self.redoLog()
            self.assertEqual(log.recover(), [(first, DoneRecord("a"))])
        self.assertEqual(events, [])
        self.assertEqual(os.path.getsize(self.path), size)
        self.assertEqual(log.append(DoneRecord("b")), JournalLocation(1, end))
        self.assertEqual([r for _, r in self.redoLog().recover()],
                         [DoneRecord("a"), DoneRecord("b")])

    def test_closeCutsZeros(self):
        """
        A closed redo log's file ends at its last record, as one written
        without zeros ahead does.
        """
        log = self.redoLog()
        log.recover()
        log.append(DoneRecord("a"))
        end = len(encodeRecord(DoneRecord("a")))
        self.assertGreater(os.path.getsize(self.path), end)
        log.close()
        self.assertEqual(os.path.getsize(self.path), end)
        self.assertEqual([r for _, r in self.redoLog().recover()], [DoneRecord("a")])

    def test_tornRecordBeforeZeros(self):
        log = self.redoLog()
        log.recover()
        log.append(DoneRecord("a"))
        end = len(encodeRecord(DoneRecord("a")))
        with open(self.path, "r+b") as f:
            f.seek(end)
            f.write(encodeRecord(DoneRecord("b"))[:-2])
        log = self.redoLog()
        self.assertEqual([r for _, r in log.recover()], [DoneRecord("a")])
        self.assertEqual(os.path.getsize(self.path), end)

    def test_recordsStayBeforeTheZerosBeingWritten(self):
        """
        While zeros are written in a thread, records go before the position
        they start at, or to a new file: never where the zeros go.
        """
        pool = ManualThreadPool()
        log = self.redoLog(pool, preallocate=100)
        log.recover()
        record = DoneRecord("x" * 10)
        locations = [log.append(record)]
        # Records of 21 bytes; the zeros start 50 bytes past the first one,
        # at 71: two more fit before them, the fourth goes to redo.2.
        self.assertEqual(len(pool.pending), 1)
        for _ in range(3):
            locations.append(log.append(record))
        self.assertEqual([location.number for location in locations], [1, 1, 1, 2])
        synced = []
        log.sync().addCallback(synced.append)
        # The round that forces and closes the retired redo.1 ends before
        # the zeros of redo.1 are written, through a descriptor of their own.
        pool.pending.reverse()
        with capturedLogs() as events:
            while pool.pending:
                pool.runOne()
        self.assertEqual(synced, [None])
        self.assertEqual([formatEvent(e) for e in events], [])
        self.assertEqual(openFiles(self.path), 0)
        with open(self.path, "rb") as f:
            self.assertEqual(len(f.read()), 71 + 100)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual([r for _, r in self.redoLog(preallocate=0).recover()], [record] * 4)

    def test_zerosForcedThroughTheirOwnDescriptor(self):
        """
        The zeros are forced through a descriptor of their own, so that a
        write error the kernel reports to that fsync still reaches the
        journal's next round through its own descriptor.
        """
        realFdatasync = os.fdatasync
        seen = []

        def fdatasync(fd):
            seen.append(openFiles(self.path))
            realFdatasync(fd)

        self.patch(os, "fdatasync", fdatasync)
        log = self.redoLog()
        log.recover()
        log.append(DoneRecord("a"))
        self.assertEqual(seen, [2])

    def test_fullDisk(self):
        """
        Zeros that do not fit are cut again and said once; records go on.
        """
        realPwrite = os.pwrite

        def pwrite(fd, data, position):
            if not any(data):
                raise OSError(28, "No space left on device")
            return realPwrite(fd, data, position)

        self.patch(os, "pwrite", pwrite)
        log = self.redoLog(preallocate=100)
        log.recover()
        with capturedLogs() as events:
            for i in range(20):
                log.append(DoneRecord("x%d" % (i,)))
        lines = [formatEvent(e) for e in events]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("No space left on device", lines[0])
        self.assertEqual([r for _, r in self.redoLog(preallocate=0).recover()],
                         [DoneRecord("x%d" % (i,)) for i in range(20)])


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
