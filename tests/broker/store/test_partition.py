"""
Tests for L{metamorphosis.broker.store.partition.MessageStore}: layout,
offsets, slicing, the flush policies and failures.
"""

import errno
import os
import stat

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import gatherResults
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from metamorphosis.broker.store.errors import (
    CorruptRecord,
    OffsetBeforeStart,
    OffsetMismatch,
    PartitionReadOnly,
    StoreClosed,
)
from metamorphosis.broker.store.interfaces import IMessageStore
from metamorphosis.broker.store.partition import (
    MessageStore,
    acknowledging,
    batchedWrites,
    segmentLost,
)
from metamorphosis.broker.store.segment import (
    Segment,
    nameFromOffset,
    offsetFromName,
    openSegmentFile,
)
from metamorphosis.protocol.records import checksum, decodeRecords, encodePayload

from .helpers import (
    ImmediateReactor,
    ImmediateThreadPool,
    ManualThreadPool,
    makeStore,
    readPartition,
    record,
    topicConfig,
)

# Records as the Java broker stores them, in hex.
EXAMPLE1 = bytes.fromhex("00000005" "3610a686" "b41bba610a400000" "00000000" "68656c6c6f")
EXAMPLE2 = bytes.fromhex(
    "0000000a" "39362501" "b41bba610a401005" "00000001" "00000004" "74616731" "6869"
)
EXAMPLE3 = bytes.fromhex("00000005" "18fc0e13" "031750fa8a400000" "00000001" "00000000" "78")


def appendExample(store, number):
    return {
        1: lambda: store.append(-5468572396564774912, 0, b"hello"),
        2: lambda: store.append(-5468572396564770811, 1, bytes.fromhex("00000004746167316869")),
        3: lambda: store.append(222735743569625088, 1, bytes.fromhex("0000000078")),
    }[number]()


def countFileFsyncs(testCase):
    """
    Count the fsyncs and fdatasyncs (group commit rounds) of regular files
    (not directories) from now on.
    """
    fsyncs = []

    def counting(real):
        def countingFsync(fd):
            if stat.S_ISREG(os.fstat(fd).st_mode):
                fsyncs.append(fd)
            real(fd)
        return countingFsync

    testCase.patch(os, "fsync", counting(os.fsync))
    testCase.patch(os, "fdatasync", counting(os.fdatasync))
    return fsyncs


class NamingTests(SynchronousTestCase):
    def test_names(self):
        self.assertEqual(nameFromOffset(0), "00000000000000000000.meta")
        self.assertEqual(nameFromOffset(1073741911), "00000000001073741911.meta")
        self.assertEqual(offsetFromName("00000000001073741911.meta"), 1073741911)
        self.assertIsNone(offsetFromName("00000000000000000000.meta.arc"))
        self.assertIsNone(offsetFromName("foo.meta"))


class GoldenLayoutTests(SynchronousTestCase):
    """
    The files a partition holds after known appends, byte for byte as the
    Java broker writes them.
    """

    def test_layout(self):
        directory = self.mktemp()
        store = makeStore(directory, unflushThreshold=0, maxSegmentSize=60)
        verifyObject(IMessageStore, store)
        offsets = [self.successResultOf(appendExample(store, n)) for n in (1, 2, 3, 1)]
        # 25 + 30 = 55 < 60 stays; the third record takes the segment to
        # 80 >= 60, so it rolls and the fourth starts the segment at 80.
        self.assertEqual(offsets, [0, 25, 55, 80])
        # Zeros follow the records of the active segment until it closes.
        active = os.path.join(directory, "00000000000000000080.meta")
        self.assertEqual(os.path.getsize(active), 60)
        self.successResultOf(store.close())
        self.assertEqual(
            sorted(os.listdir(directory)),
            ["00000000000000000000.meta", "00000000000000000080.meta"],
        )
        with open(os.path.join(directory, "00000000000000000000.meta"), "rb") as f:
            self.assertEqual(f.read(), EXAMPLE1 + EXAMPLE2 + EXAMPLE3)
        with open(os.path.join(directory, "00000000000000000080.meta"), "rb") as f:
            self.assertEqual(f.read(), EXAMPLE1)
        self.assertEqual((store.minOffset, store.maxOffset), (0, 105))
        self.assertEqual(store.sizeInBytes, 105)
        self.assertEqual(store.messageCount, 4)

    def test_firstSegmentAtOffsetIfCreate(self):
        directory = self.mktemp()
        store = MessageStore(
            "test", 0, directory, topicConfig(unflushThreshold=0),
            reactor=ImmediateReactor(), threadpool=ImmediateThreadPool(), offsetIfCreate=4096,
        )
        self.assertEqual(self.successResultOf(appendExample(store, 1)), 4096)
        self.assertEqual(os.listdir(directory), ["00000000000000004096.meta"])
        self.assertEqual(store.slice(4096, 100).read(), EXAMPLE1)


class AppendSliceTests(SynchronousTestCase):
    @settings(max_examples=25, deadline=None)
    @given(
        st.lists(
            st.tuples(st.binary(max_size=200), st.none() | st.text(max_size=10)),
            min_size=1,
            max_size=25,
        ),
        st.integers(min_value=30, max_value=600),
        st.booleans(),
        st.sampled_from([0, 1, 64, 1000]),
    )
    def test_slicesFromEveryBoundary(self, messages, maxSegmentSize, batch, preallocate):
        """
        After any appends, a slice from each record's offset starts with
        exactly that record, the records read back in order are the ones
        appended, and no slice crosses a segment end.
        """
        directory = self.mktemp()
        store = makeStore(directory, unflushThreshold=0, maxSegmentSize=maxSegmentSize,
                          preallocate=preallocate)
        expected = []
        offsets = []
        # Ids from 1: a record of id 0, flag 0 and no body is all zero
        # bytes, which no broker writes (ids are never 0).
        for msgId, (data, attribute) in enumerate(messages, 1):
            body, flag = encodePayload(data, attribute)
            expected.append(record(msgId, data, attribute))
            if batch and msgId % 3 == 2:
                offsets.append(self.successResultOf(store.appendBatch([(msgId, flag, body)])))
            else:
                offsets.append(self.successResultOf(store.append(msgId, flag, body)))
        positions = [sum(map(len, expected[:i])) for i in range(len(expected))]
        self.assertEqual(offsets, positions)
        self.assertEqual(store.maxOffset, sum(map(len, expected)))
        segmentEnds = [s.end for s in store.segments]
        for offset, encoded in zip(offsets, expected):
            piece = store.slice(offset, 1 << 20)
            self.assertEqual(piece.offset, offset)
            data = piece.read()
            self.assertEqual(data[: len(encoded)], encoded)
            self.assertIn(offset + piece.length, segmentEnds)
            self.assertEqual(store.nearestOffset(offset) <= offset, True)
        # Reading the whole log slice by slice gives back every record.
        offset, seen = 0, []
        while True:
            piece = store.slice(offset, 97)
            if piece is None:
                break
            records, consumed = decodeRecords(piece.read())
            if consumed == 0:
                piece = store.slice(offset, 1 << 20)
                records, consumed = decodeRecords(piece.read())
            seen.extend(r.encode() for r in records)
            offset += consumed
        self.assertEqual(seen, expected)
        names, data = readPartition(directory)
        self.assertEqual(data, b"".join(expected))
        self.assertEqual([offsetFromName(n) for n in names], [s.start for s in store.segments])

    def test_sliceBounds(self):
        store = makeStore(self.mktemp(), unflushThreshold=0, maxSegmentSize=50)
        for n in (1, 2, 3):
            appendExample(store, n)
        # Segments [0, 55) and [55, 80).
        self.assertEqual(store.slice(0, 1000).length, 55)
        self.assertEqual(store.slice(25, 10).length, 10)
        self.assertEqual(store.slice(55, 1000).read(), EXAMPLE3)
        self.assertIsNone(store.slice(80, 1000))
        self.assertEqual(store.nearestOffset(30), 0)
        self.assertEqual(store.nearestOffset(60), 55)
        self.assertEqual(store.nearestOffset(80), 80)
        self.assertEqual(store.nearestOffset(9999), 80)

    def test_zeroCopyView(self):
        store = makeStore(self.mktemp(), unflushThreshold=0, maxSegmentSize=50)
        for n in (1, 2, 3):
            appendExample(store, n)
        piece = store.slice(25, 1000)
        self.assertEqual(os.pread(piece.fileno(), piece.length, piece.position), EXAMPLE2)
        self.assertEqual(piece.records()[0][0].attribute, "tag1")

    def test_batchIsOneAppend(self):
        store = makeStore(self.mktemp(), unflushThreshold=0)
        appendExample(store, 1)
        offset = self.successResultOf(
            store.appendBatch([(1, 0, b"a"), (2, 0, b"bb"), (3, 1, b"\0\0\0\0c")])
        )
        self.assertEqual(offset, 25)
        self.assertEqual(store.messageCount, 2)
        records, consumed = store.slice(25, 1000).records()
        self.assertEqual([r.id for r in records], [1, 2, 3])
        self.assertEqual(consumed, 21 + 22 + 25)


class ReplicationAppendTests(SynchronousTestCase):
    def test_appendAtExpectedOffset(self):
        store = makeStore(self.mktemp(), unflushThreshold=0)
        self.assertEqual(self.successResultOf(store.appendRecords(EXAMPLE1 + EXAMPLE2, 0)), 0)
        self.assertEqual(store.messageCount, 2)
        failure = self.failureResultOf(store.appendRecords(EXAMPLE3, 25), OffsetMismatch)
        self.assertEqual((failure.value.expected, failure.value.actual), (25, 55))
        self.assertEqual(store.maxOffset, 55)
        self.assertEqual(self.successResultOf(store.appendRecords(EXAMPLE3, 55)), 55)
        self.assertEqual(store.slice(0, 1000).read(), EXAMPLE1 + EXAMPLE2 + EXAMPLE3)

    def test_partialRecordRefused(self):
        store = makeStore(self.mktemp(), unflushThreshold=0)
        self.failureResultOf(store.appendRecords(EXAMPLE1 + EXAMPLE2[:-1]), ValueError)
        self.assertEqual(store.maxOffset, 0)


def segmentFiles(directory):
    """
    Each segment file of a closed partition and its bytes.
    """
    files = {}
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            files[name] = f.read()
    return files


class AppendRecordsThenTests(SynchronousTestCase):
    """
    L{MessageStore.appendRecordsThen}: records already encoded, stored as
    one entry (a sync slave's syncs of one read to one partition).
    """

    def test_oneEntry(self):
        """
        The records are written as they are, counted one by one, and
        acknowledged once, with the offset of the first.
        """
        store = makeStore(self.mktemp(), unflushThreshold=0)
        appendExample(store, 1)
        outcomes = []
        store.appendRecordsThen(EXAMPLE2 + EXAMPLE3, 2, outcomes.append, outcomes.append)
        self.assertEqual(outcomes, [25])
        self.assertEqual(store.messageCount, 3)
        self.assertEqual(store.slice(0, 1000).read(), EXAMPLE1 + EXAMPLE2 + EXAMPLE3)

    @settings(max_examples=60, deadline=None)
    @given(
        st.lists(st.lists(st.binary(max_size=40), min_size=1, max_size=5), min_size=1, max_size=8),
        st.integers(20, 150),
        st.sampled_from([0, 100]),
    )
    def test_sameSegmentsAsOneByOne(self, batches, maxSegmentSize, unflushThreshold):
        """
        Batches of records leave the same segment files, byte for byte, as
        the same records appended one by one: the segment rolls between the
        records of a batch where it would after one of them; each batch is
        acknowledged once, at the offset its first record got.
        """
        single, batched = self.mktemp(), self.mktemp()
        one = makeStore(single, unflushThreshold=unflushThreshold, maxSegmentSize=maxSegmentSize)
        many = makeStore(batched, unflushThreshold=unflushThreshold, maxSegmentSize=maxSegmentSize)
        firstOffsets = []
        acknowledged = []
        msgId = 0
        for bodies in batches:
            buffer = b""
            for index, body in enumerate(bodies):
                msgId += 1
                offset = self.successResultOf(one.append(msgId, 0, body, checksum(body)))
                if index == 0:
                    firstOffsets.append(offset)
                buffer += record(msgId, body)
            many.appendRecordsThen(buffer, len(bodies), acknowledged.append, self.fail)
            self.assertEqual(len(acknowledged), len(firstOffsets))
        self.assertEqual(acknowledged, firstOffsets)
        self.assertEqual(many.messageCount, one.messageCount)
        self.successResultOf(one.close())
        self.successResultOf(many.close())
        self.assertEqual(segmentFiles(batched), segmentFiles(single))

    def test_splitFailsOnce(self):
        """
        A batch split at a roll whose second part fails to be written fails
        once, and is not acknowledged.
        """
        store = makeStore(self.mktemp(), unflushThreshold=0, maxSegmentSize=60, preallocate=0)
        realPwrite = os.pwrite
        writes = []

        def secondFails(fd, data, position):
            writes.append(len(data))
            if len(writes) == 2:
                raise OSError(28, "No space left on device")
            return realPwrite(fd, data, position)

        self.patch(os, "pwrite", secondFails)
        outcomes = []
        store.appendRecordsThen(EXAMPLE1 + EXAMPLE2 + EXAMPLE3 + EXAMPLE1, 4, outcomes.append, outcomes.append)
        self.flushLoggedErrors(OSError)
        self.assertEqual(writes, [25 + 30 + 25, 25])
        [failure] = outcomes
        failure.trap(OSError)

    def test_readOnly(self):
        """
        A partition that takes no writes fails the batch once.
        """
        store = makeStore(self.mktemp(), unflushThreshold=0)
        store.readOnly = "its segment was lost"
        outcomes = []
        store.appendRecordsThen(EXAMPLE1 + EXAMPLE2, 2, outcomes.append, outcomes.append)
        [failure] = outcomes
        self.assertIsInstance(failure.value, PartitionReadOnly)


class FlushPolicyTests(SynchronousTestCase):
    def test_thresholdIsExceeded(self):
        """
        With C{unflushThreshold=3} the fourth message triggers the fsync;
        until then consumers see nothing, though the puts are acknowledged.
        """
        store = makeStore(self.mktemp(), unflushThreshold=3, unflushInterval=10**9)
        for _ in range(3):
            self.successResultOf(appendExample(store, 1))
        self.assertEqual(store.maxOffset, 0)
        self.assertIsNone(store.slice(0, 100))
        self.successResultOf(appendExample(store, 1))
        self.assertEqual(store.maxOffset, 100)
        self.assertEqual(store.slice(0, 1000).length, 100)

    def test_interval(self):
        reactor = ImmediateReactor()
        store = makeStore(self.mktemp(), reactor=reactor, unflushThreshold=100,
                          unflushInterval=1000)
        appendExample(store, 1)
        self.assertEqual(store.maxOffset, 0)
        reactor.advance(1.5)
        appendExample(store, 1)
        self.assertEqual(store.maxOffset, 50)

    def test_explicitFlush(self):
        store = makeStore(self.mktemp(), unflushThreshold=100)
        appendExample(store, 2)
        self.assertEqual(store.maxOffset, 0)
        self.successResultOf(store.flush())
        self.assertEqual(store.maxOffset, 30)

    def test_rollFlushesTheFullSegment(self):
        store = makeStore(self.mktemp(), unflushThreshold=100, maxSegmentSize=50)
        for n in (1, 2, 3):
            appendExample(store, n)
        self.assertEqual(store.maxOffset, 55)

    def test_ackAfterWriteUnderThreshold(self):
        pool = ManualThreadPool()
        store = makeStore(self.mktemp(), threadpool=pool, unflushThreshold=100)
        fsyncs = countFileFsyncs(self)
        d = appendExample(store, 1)
        self.assertNoResult(d)
        pool.runAll()
        self.assertEqual(self.successResultOf(d), 0)
        self.assertEqual(fsyncs, [])

    def test_groupCommit(self):
        """
        Under group commit a put is acknowledged only after its fsync, and
        all puts arriving while one fsync runs share the next one.
        """
        pool = ManualThreadPool()
        store = makeStore(self.mktemp(), threadpool=pool, unflushThreshold=0)
        fsyncs = countFileFsyncs(self)
        first = appendExample(store, 1)
        self.assertEqual(len(pool.pending), 1)
        others = [appendExample(store, 2) for _ in range(5)]
        self.assertEqual(len(pool.pending), 1)
        # The flush of the first put is running in a thread: gets go on.
        self.assertIsNone(store.slice(0, 100))
        self.assertNoResult(first)
        pool.runOne()
        self.assertEqual(len(fsyncs), 1)
        self.assertEqual(self.successResultOf(first), 0)
        self.assertEqual(store.maxOffset, 25)
        for d in others:
            self.assertNoResult(d)
        self.assertEqual(len(pool.pending), 1)
        pool.runOne()
        self.assertEqual([self.successResultOf(d) for d in others], [25, 55, 85, 115, 145])
        self.assertEqual(store.maxOffset, 175)
        self.assertEqual(len(fsyncs), 2)
        self.assertIs(self.successResultOf(store.flush()), None)


    def test_smallWritesOnTheReactorThread(self):
        """
        Once the segment file exists, a small batch is written on the
        calling thread and, without an fsync due, acknowledged at once; a
        batch of C{INLINE_WRITE_BYTES} or more goes to the thread pool.
        """
        from metamorphosis.broker.store import partition

        self.patch(partition, "INLINE_WRITE_BYTES", 100)
        pool = ManualThreadPool()
        store = makeStore(self.mktemp(), threadpool=pool, unflushThreshold=100, preallocate=0)
        fsyncs = countFileFsyncs(self)
        first = appendExample(store, 1)
        self.assertNoResult(first)
        # The first write creates the file: in a thread.
        pool.runAll()
        self.assertEqual(self.successResultOf(first), 0)
        self.assertEqual(self.successResultOf(appendExample(store, 2)), 25)
        self.assertEqual(pool.pending, [])
        self.assertEqual(store.segments[-1].written, 55)
        large = store.appendBatch([(1, 0, b"x" * 80)])
        self.assertNoResult(large)
        self.assertEqual(len(pool.pending), 1)
        self.assertEqual(os.path.getsize(store.segments[-1].path), 55)
        pool.runAll()
        self.assertEqual(self.successResultOf(large), 55)
        self.assertEqual(os.path.getsize(store.segments[-1].path), 155)
        self.assertEqual(fsyncs, [])

    def test_groupCommitWritesInlineFsyncsInAThread(self):
        """
        Under group commit a small batch is written on the reactor thread
        but acknowledged only after the fsync, which runs in a thread.
        """
        pool = ManualThreadPool()
        store = makeStore(self.mktemp(), threadpool=pool, unflushThreshold=0, preallocate=0)
        fsyncs = countFileFsyncs(self)
        first = appendExample(store, 1)
        pool.runAll()
        self.assertEqual(self.successResultOf(first), 0)
        d = appendExample(store, 2)
        self.assertEqual(os.path.getsize(store.segments[-1].path), 55)
        self.assertNoResult(d)
        self.assertEqual(len(fsyncs), 1)
        self.assertEqual(store.maxOffset, 25)
        pool.runOne()
        self.assertEqual(len(fsyncs), 2)
        self.assertEqual(self.successResultOf(d), 25)
        self.assertEqual(store.maxOffset, 55)

    def test_groupCommitLoop(self):
        """
        Under group commit each put is written at once and acknowledged by
        the first fsync that starts after it: one fsync runs at a time, the
        puts that arrive meanwhile are written together once it is over and
        acknowledged together by the next round, none before its fsync.
        """
        pool = ManualThreadPool()
        store = makeStore(self.mktemp(), threadpool=pool, unflushThreshold=0, preallocate=0)
        # The segment file is created (in a thread) by the first write.
        appendExample(store, 1)
        pool.runOne()
        synced = []
        realFdatasync = os.fdatasync

        def fdatasync(fd):
            synced.append(store.maxOffset)
            realFdatasync(fd)

        # A round's sync (ThreadFsync) syncs the data: fdatasync.
        self.patch(os, "fdatasync", fdatasync)
        first = appendExample(store, 1)
        self.assertEqual(len(pool.pending), 1)
        self.assertEqual(store.sizeInBytes, 50)
        # Arriving while the first round's fsync runs: queued, not written.
        rest = [appendExample(store, n) for n in (2, 3, 1)]
        self.assertEqual(len(pool.pending), 1)
        self.assertEqual(store.sizeInBytes, 50)
        self.assertIsNone(store.slice(25, 1000))
        pool.runOne()
        self.assertEqual(self.successResultOf(first), 25)
        # Written once the round was over, with the next round started.
        self.assertEqual(store.sizeInBytes, 130)
        self.assertEqual([d.called for d in rest], [False] * 3)
        self.assertEqual(len(pool.pending), 1)
        self.assertEqual(store.maxOffset, 50)
        pool.runOne()
        self.assertEqual(synced, [25, 50])
        self.assertEqual([self.successResultOf(d) for d in rest], [50, 80, 105])
        self.assertEqual(store.maxOffset, 130)
        self.assertEqual(pool.pending, [])

    def test_groupCommitBatchWithoutItsOwnFsync(self):
        """
        Under group commit a batch appended with C{durable=False} (a
        transaction's commit, durable in the journal) is acknowledged once
        written, without an fsync; consumers get it, and L{whenFlushed}
        fires, once a flush covers it.  Then L{flush} has nothing to do.
        """
        pool = ManualThreadPool()
        store = makeStore(self.mktemp(), threadpool=pool, unflushThreshold=0, preallocate=0)
        appendExample(store, 1)
        pool.runOne()
        fsyncs = countFileFsyncs(self)
        d = store.appendBatch([(7, 0, b"hello"), (8, 0, b"world")], durable=False)
        self.assertEqual(self.successResultOf(d), 25)
        self.assertEqual((fsyncs, pool.pending), ([], []))
        self.assertEqual(store.maxOffset, 25)
        self.assertEqual(store.slice(0, 1000).length, 25)
        # A get reaching the batch waits for a flush; one stopping before
        # it does not.
        self.assertEqual((store.awaitsFlush(0, 1000), store.awaitsFlush(0, 25)), (True, False))
        flushed = store.whenFlushed(75)
        self.assertNoResult(flushed)
        flush = store.flush()
        pool.runOne()
        self.successResultOf(flush)
        self.successResultOf(flushed)
        self.assertEqual((len(fsyncs), store.maxOffset), (1, 75))
        self.successResultOf(store.flush())
        self.successResultOf(store.whenFlushed(75))
        self.assertFalse(store.awaitsFlush(0, 1000))
        self.assertEqual((len(fsyncs), pool.pending), (1, []))

    def test_groupCommitRoundCoversBatchWithoutFsync(self):
        """
        The group commit round of a later put covers a batch appended
        without an fsync of its own.
        """
        pool = ManualThreadPool()
        store = makeStore(self.mktemp(), threadpool=pool, unflushThreshold=0, preallocate=0)
        appendExample(store, 1)
        pool.runOne()
        self.successResultOf(store.appendBatch([(7, 0, b"hello")], durable=False))
        flushed = store.whenFlushed(50)
        put = appendExample(store, 1)
        self.assertNoResult(flushed)
        pool.runOne()
        self.assertEqual(self.successResultOf(put), 50)
        self.successResultOf(flushed)
        self.assertEqual(store.maxOffset, 75)

    def test_failedFsyncFailsFlushWaiters(self):
        """
        When the fsync that should cover a batch fails, L{whenFlushed}
        errbacks: a later fsync might not write what the failed one lost.
        """
        store = makeStore(self.mktemp(), unflushThreshold=0, preallocate=0)
        self.successResultOf(appendExample(store, 1))
        self.successResultOf(store.appendBatch([(7, 0, b"hello")], durable=False))
        flushed = store.whenFlushed(50)

        def fdatasync(fd):
            raise OSError(errno.EIO, "Input/output error")

        # The sync of the records is an fdatasync.
        self.patch(os, "fdatasync", fdatasync)
        self.failureResultOf(store.flush(), OSError)
        self.failureResultOf(flushed, OSError)
        self.assertEqual(store.maxOffset, 25)

    def test_groupCommitSliceStopsAtMark(self):
        """
        A slice under group commit ends at the synced mark: records written
        but not yet acknowledged are not served.
        """
        pool = ManualThreadPool()
        store = makeStore(self.mktemp(), threadpool=pool, unflushThreshold=0)
        appendExample(store, 1)
        pool.runOne()
        second = appendExample(store, 2)
        self.assertEqual(store.slice(0, 1000).length, 25)
        pool.runOne()
        self.successResultOf(second)
        self.assertEqual(store.slice(0, 1000).length, 55)

    def test_appendsFromCallbacksWaitForTheNextJob(self):
        """
        Puts made by the callbacks of a job that had nothing to write (here a
        refused replicated append) form one new job: two jobs never run at
        once for one partition.
        """
        pool = ManualThreadPool()
        store = makeStore(self.mktemp(), threadpool=pool, unflushThreshold=0)
        first = appendExample(store, 1)
        appended = []
        store.appendRecords(EXAMPLE3, expectedOffset=999).addErrback(
            lambda failure: appended.extend(
                [appendExample(store, 1), appendExample(store, 2)]
            )
        )
        pool.runOne()
        self.assertEqual(self.successResultOf(first), 0)
        self.assertEqual(len(appended), 2)
        self.assertEqual(len(pool.pending), 1)
        pool.runAll()
        self.assertEqual([self.successResultOf(d) for d in appended], [25, 50])


class PreallocateTests(SynchronousTestCase):
    """
    The zeros a store writes ahead of the records of its active segment.
    """

    def test_aheadOfTheRecordsUntilClosed(self):
        directory = self.mktemp()
        store = makeStore(directory, unflushThreshold=0, preallocate=1000)
        path = os.path.join(directory, "00000000000000000000.meta")
        self.assertEqual(self.successResultOf(appendExample(store, 1)), 0)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), EXAMPLE1 + bytes(1000))
        # Records go over the zeros; more are written once half are used:
        # by the 22nd record (550 + 500 > 1025), up to 550 + 1000.
        for _ in range(29):
            self.successResultOf(appendExample(store, 1))
        with open(path, "rb") as f:
            self.assertEqual(f.read(), EXAMPLE1 * 30 + bytes(1550 - 750))
        self.successResultOf(store.close())
        with open(path, "rb") as f:
            self.assertEqual(f.read(), EXAMPLE1 * 30)

    def test_closeAfterRoll(self):
        """
        Closing writes what is queued, which may roll to a new segment and
        write zeros into it: those are cut too.
        """
        from metamorphosis.broker.store.bursts import batchedWrites

        directory = self.mktemp()
        pool = ManualThreadPool()
        store = makeStore(directory, threadpool=pool, unflushThreshold=0, preallocate=1000,
                          maxSegmentSize=40)
        with batchedWrites:
            pending = [appendExample(store, 1), appendExample(store, 2)]
            closed = store.close()
        # The job writing them (and rolling) runs in a thread after close().
        self.assertNoResult(closed)
        while pool.pending:
            pool.runAll()
        self.assertEqual([self.successResultOf(d) for d in pending], [0, 25])
        self.successResultOf(closed)
        self.assertEqual(sorted(os.listdir(directory)),
                         ["00000000000000000000.meta", "00000000000000000055.meta"])
        self.assertEqual(os.path.getsize(os.path.join(directory, "00000000000000000055.meta")),
                         0)

    def test_sealedSegmentEndsAtItsRecords(self):
        """
        A segment sealed with zeros after its records (a tail written under
        a larger C{maxSegmentSize}) loses them before the next one starts.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "00000000000000000000.meta")
        with open(path, "wb") as f:
            f.write(EXAMPLE1 + bytes(5000))
        store = makeStore(directory, recover=True, unflushThreshold=0, maxSegmentSize=40)
        self.assertEqual(self.successResultOf(appendExample(store, 1)), 25)
        self.assertEqual(sorted(os.listdir(directory)),
                         ["00000000000000000000.meta", "00000000000000000050.meta"])
        with open(path, "rb") as f:
            self.assertEqual(f.read(), EXAMPLE1 * 2)

    def test_fullDisk(self):
        """
        Zeros that do not fit on the disk are removed again and said once;
        the puts go on, over the records' own bytes only.
        """
        directory = self.mktemp()
        store = makeStore(directory, unflushThreshold=0, preallocate=1000)
        realPwrite = os.pwrite

        def pwrite(fd, data, position):
            if not any(data):
                realPwrite(fd, bytes(data)[:100], position)
                raise OSError(28, "No space left on device")
            return realPwrite(fd, data, position)

        self.patch(os, "pwrite", pwrite)
        with capturedLogs() as events:
            offsets = [self.successResultOf(appendExample(store, 1)) for _ in range(60)]
        self.assertEqual(offsets, [25 * n for n in range(60)])
        self.assertEqual(os.path.getsize(store.segments[-1].path), 60 * 25)
        lines = [formatEvent(e) for e in events if "zeros" in formatEvent(e)]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("No space left on device", lines[0])


class FailureTests(SynchronousTestCase):
    def test_writeFailure(self):
        """
        A failed write fails the puts of its batch; the store then carries
        on at the last offset known to be written.
        """
        store = makeStore(self.mktemp(), unflushThreshold=0, preallocate=0)
        self.assertEqual(self.successResultOf(appendExample(store, 1)), 0)
        realPwrite = os.pwrite

        def failingPwrite(fd, data, position):
            realPwrite(fd, bytes(data)[:7], position)
            raise OSError(28, "No space left on device")

        self.patch(os, "pwrite", failingPwrite)
        self.failureResultOf(appendExample(store, 2), OSError)
        self.flushLoggedErrors(OSError)
        self.assertEqual(store.maxOffset, 25)
        self.patch(os, "pwrite", realPwrite)
        self.assertEqual(self.successResultOf(appendExample(store, 3)), 25)
        self.assertEqual(store.slice(0, 1000).read(), EXAMPLE1 + EXAMPLE3)
        self.assertEqual(os.path.getsize(store.segments[-1].path), 50)

    def test_closed(self):
        directory = self.mktemp()
        store = makeStore(directory, unflushThreshold=100)
        appendExample(store, 1)
        self.successResultOf(store.close())
        self.failureResultOf(appendExample(store, 1), StoreClosed)
        reopened = makeStore(directory, unflushThreshold=100, recover=True)
        self.assertEqual(reopened.maxOffset, 25)

    def test_corruptRecordReported(self):
        """
        L{MessageStore.readRecords} verifies checksums: a damaged record is
        logged and reported, records before it are still served.
        """
        directory = self.mktemp()
        store = makeStore(directory, unflushThreshold=0)
        gatherResults([appendExample(store, n) for n in (1, 2, 3)])
        with open(store.segments[0].path, "r+b") as f:
            f.seek(25 + 22)
            f.write(b"X")
        self.assertEqual(store.slice(0, 1000).read()[47:48], b"X")
        records, nextOffset = self.successResultOf(store.readRecords(0, 1000))
        self.assertEqual((len(records), nextOffset), (1, 25))
        failure = self.failureResultOf(store.readRecords(25, 1000), CorruptRecord)
        self.assertEqual(failure.value.offset, 25)
        records, nextOffset = self.successResultOf(store.readRecords(55, 1000))
        self.assertEqual((records[0].data, nextOffset), (b"x", 80))
        self.assertEqual(self.successResultOf(store.readRecords(80, 1000)), ([], 80))

    def test_offsetBeforeStart(self):
        store = makeStore(self.mktemp(), unflushThreshold=0)
        self.assertRaises(OffsetBeforeStart, store.slice, -1, 100)


class BatchedWritesTests(SynchronousTestCase):
    def test_oneWritePerBatch(self):
        """
        Appends made inside L{batchedWrites} are written together when it
        is left (one write per partition) and acknowledged only then; the
        store takes appends one by one again outside it.
        """
        from metamorphosis.broker.store.bursts import batchedWrites

        store = makeStore(self.mktemp(), preallocate=0)
        self.successResultOf(appendExample(store, 1))
        writes = []
        realWrite = os.pwrite

        def pwrite(fd, data, position):
            writes.append(len(data))
            return realWrite(fd, data, position)

        self.patch(os, "pwrite", pwrite)
        with batchedWrites:
            pending = [appendExample(store, n) for n in (1, 2, 3)]
            self.assertEqual(writes, [])
            self.assertEqual([d.called for d in pending], [False] * 3)
        self.assertEqual(writes, [25 + 30 + 25])
        self.assertEqual([self.successResultOf(d) for d in pending], [25, 50, 80])
        self.successResultOf(appendExample(store, 1))
        self.assertEqual(len(writes), 2)


class SegmentLostTests(SynchronousTestCase):
    """
    L{segmentLost} tells whether the active segment's name still is its
    open file with one C{stat} of the name (the open file's identity is
    read once), and how it was lost when not.
    """

    def setUp(self):
        directory = self.mktemp()
        os.makedirs(directory)
        self.segment = Segment(directory, 0)
        self.segment.file = openSegmentFile(self.segment.path, create=True)
        self.addCleanup(self.segment.file.close)

    def test_stillNamed(self):
        self.assertIsNone(segmentLost(self.segment))
        self.assertIsNone(segmentLost(self.segment))

    def test_deleted(self):
        segmentLost(self.segment)
        os.remove(self.segment.path)
        self.assertEqual(segmentLost(self.segment), "deleted")

    def test_renamedAway(self):
        os.rename(self.segment.path, self.segment.path + ".away")
        self.assertEqual(segmentLost(self.segment), "deleted")

    def test_deletedThenRecreated(self):
        segmentLost(self.segment)
        os.remove(self.segment.path)
        with open(self.segment.path, "wb"):
            pass
        self.assertEqual(segmentLost(self.segment), "deleted")

    def test_replaced(self):
        other = self.segment.path + ".new"
        with open(other, "wb"):
            pass
        segmentLost(self.segment)
        os.rename(self.segment.path, self.segment.path + ".old")
        os.rename(other, self.segment.path)
        self.assertEqual(segmentLost(self.segment), "replaced")

    def test_oneStatPerCheck(self):
        """
        After the first check, each check is one C{stat} and no C{fstat}.
        """
        segmentLost(self.segment)
        calls = []
        realStat, realFstat = os.stat, os.fstat
        self.patch(os, "stat", lambda *a, **k: calls.append("stat") or realStat(*a, **k))
        self.patch(os, "fstat", lambda *a, **k: calls.append("fstat") or realFstat(*a, **k))
        for _ in range(3):
            self.assertIsNone(segmentLost(self.segment))
        self.assertEqual(calls, ["stat"] * 3)


class AcknowledgingTests(SynchronousTestCase):
    def test_laterRunsWhenTheBurstIsOver(self):
        """
        What is given to L{acknowledging} while a store fires a burst of
        puts runs once the outermost burst is over, after every callback of
        the burst.
        """
        store = makeStore(self.mktemp())
        events = []
        with batchedWrites:
            for n in (1, 2):
                appendExample(store, n).addCallback(
                    lambda offset: (events.append(offset),
                                    acknowledging.later(lambda: events.append("later"))))
        self.assertEqual(events, [0, 25, "later", "later"])
        self.assertEqual(acknowledging.depth, 0)
        acknowledging.later(lambda: events.append("outside"))
        with acknowledging:
            with acknowledging:
                pass
            self.assertEqual(events[-1], "later")
        self.assertEqual(events[-1], "outside")


class KnownChecksumTests(SynchronousTestCase):
    @given(st.binary(max_size=300), st.integers(-(2**63), 2**63 - 1), st.integers(0, 3))
    @settings(max_examples=50, deadline=None)
    def test_sameRecord(self, body, msgId, flag):
        """
        A put whose checksum the broker already verified is stored byte for
        byte as one whose checksum the store computes.
        """
        computed, given = self.mktemp(), self.mktemp()
        first, second = makeStore(computed), makeStore(given)
        self.assertEqual(self.successResultOf(first.append(msgId, flag, body)), 0)
        self.assertEqual(
            self.successResultOf(second.append(msgId, flag, body, checksum(body))), 0)
        self.assertEqual(readPartition(given), readPartition(computed))
        self.assertEqual(second.maxOffset, first.maxOffset)
        first.close()
        second.close()
