"""
One partition's log (Java C{MessageStore}, docs/storage.md).

Appends are queued on the reactor thread and handled by jobs, one job at a
time per partition.  A job takes everything queued when it starts: the
records that arrive while one job writes and fsyncs form the next job's
batch.  A small batch into an existing segment is written on the reactor
thread (a C{pwrite} into the page cache, cheaper than a round trip through
a thread); fsyncs, segment creation and large batches run in a thread pool
(the fsyncs of group commit rounds go to an
L{metamorphosis.broker.store.interfaces.IFsync}, by default the kernel's
asynchronous one), so the reactor never waits on the disk.  Under
group commit (C{unflushThreshold <= 0}) every job ends with an fsync and the
puts of its batch are acknowledged after it, so one fsync serves every put
that arrived while the previous one ran.  Under the count/interval policy a
job ends with an fsync only when the policy asks for one, and puts are
acknowledged once written, as the Java broker does.

Offsets are assigned when a job is built, on the reactor thread, from the
bytes already written; after a failed write the next job simply starts from
what is known to be on disk.

Consumers see data up to the flushed high-water mark (L{maxOffset}), which
moves only when an fsync completes.

A transaction's commit appends its messages without an fsync of their own
(L{MessageStore.appendBatch} with C{durable=False}): the transaction journal
already holds them durably, so the commit is answered once they are
written, and the journal learns when a later fsync covers them
(L{MessageStore.whenFlushed}).

Ahead of its records the active segment holds zero bytes, written by a job
step every half C{preallocateSize} (docs/storage.md): an fsync of records
written over zeros that are already on disk changes no file size and no
block map, so the file system commits no journal for it: on ext4 it
takes about a third less time than an fsync of an append
(C{benchmarks/fsync.py}), and group commit waits for those fsyncs.  A sealed segment
and the active one at close lose their zeros, so files end at their last
record as Java's do; after a crash recovery tells the zeros from records
(L{metamorphosis.broker.store.verify}).
"""

import heapq
import itertools
import os
import struct
import time
from bisect import bisect_right
from functools import partial

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from metamorphosis.broker.store.bursts import acknowledging, batchedWrites
from metamorphosis.broker.store.errors import (
    CorruptRecord,
    DamagedRecords,
    OffsetBeforeStart,
    OffsetMismatch,
    PartitionReadOnly,
    SegmentLost,
    StoreClosed,
)
from metamorphosis.broker.store.fsync import ThreadFsync
from metamorphosis.broker.store.interfaces import IMessageStore
from metamorphosis.broker.store.recovery import writeDamageMarker
from metamorphosis.broker.store.segment import MessageSlice, Segment, openSegmentFile
from metamorphosis.broker.store.syncloop import SyncLoop
from metamorphosis.broker.store.zeros import cutZeros, writeZeros
from metamorphosis.logfields import errorText
from metamorphosis.protocol.records import (
    HEADER_SIZE,
    InvalidRecord,
    batchSize,
    encodeHeader,
    encodeRecordParts,
    iterRecords,
)
from metamorphosis.ratelog import RateLimitedLog

_length = struct.Struct(">i")

# Under group commit a job fsyncs once this many bytes are written, like the
# Java commit thread (min(maxTransferSize, 512 KiB)); the rest of the queue
# goes to the next job.  Other jobs are capped too, to bound the buffer one
# write joins.
GROUP_COMMIT_BYTES = 512 * 1024
JOB_BYTES = 4 * 1024 * 1024

# Batches smaller than this are written on the reactor thread.
INLINE_WRITE_BYTES = 512 * 1024

def _call(notify, value):
    """
    Call an entry's C{stored} or C{failed}: one that raises is logged, and
    the other entries of its job are still told (a Deferred's own
    callbacks never raise here; the broker's could only by a bug).
    """
    try:
        notify(value)
    except Exception:
        _callFailed()


def _callFailed():
    MessageStore.log.failure("Acknowledging an append failed")


def _writeAll(fd, data, position):
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, position)
        view = view[written:]
        position += written


def _cutTail(segment):
    """
    Cut the zeros after the records of C{segment}, durably: a partition
    left by a clean stop has files that end at their last record.
    """
    fd = segment.file.fileno()
    if cutZeros(fd, segment.written):
        os.fsync(fd)


def _fsyncDirectory(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def segmentLost(segment):
    """
    How the file of C{segment} was lost (C{"deleted"}, C{"replaced"}), or
    L{None} while its path still names the open file.  One C{stat} of the
    path compared with the open file's identity: cheap enough before every
    acknowledgement.
    """
    try:
        current = os.stat(segment.path)
    except FileNotFoundError:
        return "deleted"
    if (current.st_ino, current.st_dev) == segment.file.identity():
        return None
    # Another file has the name: was ours unlinked first, or renamed away?
    if os.fstat(segment.file.fileno()).st_nlink == 0:
        return "deleted"
    return "replaced"


def recordsLength(buffer):
    """
    Check that C{buffer} is a whole number of records (lengths only, no
    checksums) and count them.

    @raise ValueError: it ends inside a record or has a negative length.
    """
    position = 0
    count = 0
    while position < len(buffer):
        if len(buffer) - position < HEADER_SIZE:
            raise ValueError("buffer ends inside a record header at %d" % (position,))
        (length,) = _length.unpack_from(buffer, position)
        if length < 0 or position + HEADER_SIZE + length > len(buffer):
            raise ValueError("invalid or truncated record at %d" % (position,))
        position += HEADER_SIZE + length
        count += 1
    return count


class _Entry:
    """
    One queued append: its records, its size, and what is called with its
    offset once it may be acknowledged (C{stored}) or with a L{Failure}
    when it fails (C{failed}): a Deferred's C{callback} and C{errback}, or
    the broker's own callables (L{MessageStore.appendThen}).
    """

    __slots__ = ("messages", "raw", "size", "count", "stored", "failed", "expectedOffset",
                 "offset", "durable", "recordwise")

    def __init__(self, messages, raw, size, count, stored, failed, expectedOffset=None,
                 durable=True, recordwise=False):
        self.messages = messages
        self.raw = raw
        self.size = size
        self.count = count
        self.stored = stored
        self.failed = failed
        self.expectedOffset = expectedOffset
        self.offset = None
        # False: acknowledged once written, even under group commit.
        self.durable = durable
        # True: C{raw} holds C{count} records that roll to a new segment
        # between them where one entry per record would (L{_Halves}).
        self.recordwise = recordwise

    def splitAt(self, room):
        """
        Split this entry of several records after the first record that
        ends at or past C{room} bytes, where one entry per record would
        have rolled the segment.

        @return: this entry and L{None} when no record but its last one
            reaches C{room}; else two new entries, the records up to that
            one and the rest, whose outcomes are joined into this entry's
            (L{_Halves}).
        """
        raw = self.raw
        end = 0
        count = 0
        while True:
            end += HEADER_SIZE + _length.unpack_from(raw, end)[0]
            count += 1
            if end >= room or end >= self.size:
                break
        if end >= self.size:
            return self, None
        halves = _Halves(self.stored, self.failed)
        return (
            _Entry(None, raw[:end], end, count, halves.headStored, halves.partFailed,
                   recordwise=True),
            _Entry(None, raw[end:], self.size - end, self.count - count, halves.tailStored,
                   halves.partFailed, recordwise=True),
        )

    def addParts(self, parts):
        """
        Add the stored bytes of this entry to C{parts}.  Runs in the I/O
        thread: the checksums are computed there, off the reactor.
        """
        if self.raw is not None:
            parts.append(self.raw)
        else:
            encodeRecordParts(self.messages, parts)


class _Halves:
    """
    The outcomes of the two parts of an entry split at a segment roll
    (L{_Entry.splitAt}), joined into the entry's: C{stored} once both parts
    are stored, with the offset of the first (the records are contiguous
    across the roll, so it is the entry's); C{failed} once, at the first
    part that fails.
    """

    __slots__ = ("stored", "failed", "offset", "waiting")

    def __init__(self, stored, failed):
        self.stored = stored
        self.failed = failed
        self.offset = None
        self.waiting = 2

    def headStored(self, offset):
        self.offset = offset
        self._partStored()

    def tailStored(self, offset):
        self._partStored()

    def _partStored(self):
        self.waiting -= 1
        if self.waiting == 0:
            self.stored(self.offset)

    def partFailed(self, failure):
        if self.waiting > 0:
            self.waiting = -1
            self.failed(failure)


class _Write:
    """
    Job step: write entries to a segment from a file position on.
    """

    def __init__(self, segment, position):
        self.segment = segment
        self.position = position
        self.entries = []
        self.size = 0
        self.count = 0
        self.done = False

    def perform(self):
        segment = self.segment
        if segment.file is None:
            os.makedirs(segment.directory, exist_ok=True)
            segment.file = openSegmentFile(segment.path, create=True)
            _fsyncDirectory(segment.directory)
        parts = []
        for entry in self.entries:
            entry.addParts(parts)
        data = b"".join(parts)
        fd = segment.file.fileno()
        try:
            _writeAll(fd, data, self.position)
        except OSError:
            # Leave no partial record behind the last good one.
            try:
                os.ftruncate(fd, self.position)
            except OSError:
                pass
            raise
        # Nothing written into a file that no longer has a name is ever
        # acknowledged.
        lost = segmentLost(segment)
        if lost is not None:
            raise SegmentLost(segment.path, lost)
        self.done = True


class _Preallocate:
    """
    Job step: write zeros ahead of the records of the active segment, up to
    file position C{end}.  They start where the file ends now and never
    before C{recordsEnd}, the end of the job's records: no byte of a record
    is ever overwritten.

    @ivar error: the L{OSError} that stopped it (a full disk), or L{None}:
        its zeros are then removed again and the appends go on without.
    """

    def __init__(self, segment, recordsEnd, end):
        self.segment = segment
        self.recordsEnd = recordsEnd
        self.end = end
        self.error = None
        self.done = False

    def perform(self):
        fd = self.segment.file.fileno()
        try:
            writeZeros(fd, max(self.recordsEnd, os.fstat(fd).st_size), self.end)
        except OSError as e:
            self.error = e
        self.done = True


class _Roll:
    """
    Job step: seal a full segment (cut its preallocated tail, fsync) and
    create the next one.  The cut is on disk before the next file exists,
    so only the last segment ever ends in zeros.

    @ivar size: the bytes of records in the full segment.
    """

    def __init__(self, old, new, size):
        self.old = old
        self.new = new
        self.size = size
        self.done = False

    def perform(self):
        fd = self.old.file.fileno()
        cutZeros(fd, self.size)
        os.fsync(fd)
        self.new.file = openSegmentFile(self.new.path, create=True)
        _fsyncDirectory(self.new.directory)
        self.done = True


class _Job:
    """
    The file work of one batch: its steps in order, then an fsync of the
    segment they end in when the flush policy asks for one.  The steps of a
    small batch into an open segment run on the reactor thread
    (L{writeInline}), the rest in a thread (L{perform}).
    """

    def __init__(self, steps, entries, rejected, waiters, fsync, lastSegment):
        self.steps = steps
        self.entries = entries
        self.rejected = rejected
        self.waiters = waiters
        self.fsync = fsync
        self.lastSegment = lastSegment
        self.synced = False
        self.fsyncSeconds = None
        # Set when the fsync loop takes the job (group commit).
        self.syncEnd = None

    def writesInline(self):
        """
        Whether the steps are only writes, small and into open files.
        """
        size = 0
        for step in self.steps:
            if not isinstance(step, _Write) or step.segment.file is None:
                return False
            size += step.size
        return size < INLINE_WRITE_BYTES

    def writeInline(self):
        for step in self.steps:
            step.perform()

    def needsWrite(self):
        for step in self.steps:
            if not step.done:
                return True
        return False

    def needsThread(self):
        return self.fsync or self.needsWrite()

    def perform(self):
        for step in self.steps:
            if not step.done:
                step.perform()
        if self.fsync and self.lastSegment.file is not None:
            started = time.monotonic()
            os.fdatasync(self.lastSegment.file.fileno())
            self.fsyncSeconds = time.monotonic() - started
        self.synced = self.fsync


@implementer(IMessageStore)
class MessageStore:
    """
    The log of one topic partition.

    @param segments: the recovered segments, oldest first; a new partition
        starts with one empty segment at C{offsetIfCreate}, created on disk
        by the first write.
    @param deletePolicy: an L{IDeletePolicy}, or L{None} for no retention.
    @param damaged: C{(start, end, reason)} of the damaged ranges known
        (recovery found them): never served.
    @param readOnly: why the partition's files are not whole, or L{None}:
        a read-only partition refuses every write.
    @param fsync: the L{metamorphosis.broker.store.interfaces.IFsync} of
        the group commit rounds; by default a
        thread of C{threadpool}.
    @param preallocate: bytes of zeros kept ahead of the records of the
        active segment (C{preallocateSize}); 0 for none.
    """

    log = Logger()
    #: Called on the reactor thread with the seconds each fsync of a
    #: write job took (the flush latency metric), or L{None}.
    fsyncObserver = None
    #: I/O errors (a full disk) are the disk's state, not bugs: logged
    #: without traceback, one line per interval for all stores.
    ioErrors = RateLimitedLog(log)

    def __init__(
        self,
        topic,
        partition,
        directory,
        topicConfig,
        segments=None,
        messageCount=0,
        deletePolicy=None,
        reactor=None,
        threadpool=None,
        offsetIfCreate=0,
        damaged=(),
        readOnly=None,
        fsync=None,
        preallocate=0,
    ):
        if reactor is None:
            from twisted.internet import reactor
        self.topic = topic
        self.partition = partition
        self.directory = directory
        self.deletePolicy = deletePolicy
        self.groupCommit = topicConfig.unflushThreshold <= 0
        self.unflushThreshold = topicConfig.unflushThreshold
        self.unflushInterval = topicConfig.unflushInterval
        self.maxSegmentSize = topicConfig.maxSegmentSize
        self.preallocate = preallocate
        self.messageCount = messageCount
        self._reactor = reactor
        self._threadpool = threadpool if threadpool is not None else reactor.getThreadPool()
        self._segments = segments or [Segment(directory, offsetIfCreate)]
        self._flushedEnd = self._segments[-1].end
        self._unflushed = 0
        self._lastFlush = reactor.seconds()
        self._queue = []
        self._waiters = []
        self._busy = False
        self._deleting = False
        self._closed = False
        self.readOnly = readOnly
        self._damaged = sorted(damaged)
        # Group commit: the fsync rounds, how many written jobs wait for
        # one, when the running round started, and a job held back until
        # they are all synced.
        self._syncLoop = SyncLoop(
            fsync if fsync is not None else ThreadFsync(reactor, self._threadpool),
            self._takeRound, lambda: acknowledging)
        self._syncing = 0
        self._roundStarted = None
        self._held = None
        self._inBatch = False
        # Batches appended without an fsync of their own (durable=False):
        # the end of the last one, and a heap of (end, order, Deferred)
        # waiting for the flushed mark to pass an end (L{whenFlushed}).
        self._lazyEnd = 0
        self._flushWaiters = []
        self._waiterOrder = itertools.count()

    def __repr__(self):
        return "<MessageStore %s-%d>" % (self.topic, self.partition)

    # Reading

    @property
    def minOffset(self):
        return self._segments[0].start

    @property
    def maxOffset(self):
        return self._flushedEnd

    @property
    def sizeInBytes(self):
        return sum(segment.written for segment in self._segments)

    @property
    def segments(self):
        """
        The current segments, oldest first (a copy).
        """
        return list(self._segments)

    @property
    def damaged(self):
        """
        The known damaged ranges as C{(start, end, reason)}, in order.
        """
        return list(self._damaged)

    def markDamaged(self, start, end, reason):
        """
        Record a damaged range: it is never served again, a read inside it
        gets L{DamagedRecords} pointing after it.

        @return: whether it was not known yet.
        """
        for known in self._damaged:
            if known[0] <= start and end <= known[1]:
                return False
        self._damaged.append((start, end, reason))
        self._damaged.sort()
        return True

    def _damageAt(self, offset):
        for start, end, reason in self._damaged:
            if start <= offset < end:
                return start, end, reason
        return None

    def _segmentAt(self, offset):
        index = bisect_right(self._segments, offset, key=lambda segment: segment.start)
        return self._segments[index - 1]

    def slice(self, offset, maxSize):
        if offset < self.minOffset:
            raise OffsetBeforeStart(offset, self.minOffset)
        if offset >= self._flushedEnd:
            return None
        damage = self._damageAt(offset)
        if damage is not None:
            raise DamagedRecords(offset, damage[1], damage[2])
        segment = self._segmentAt(offset)
        position = offset - segment.start
        end = segment.written - position
        if self.groupCommit:
            # Under group commit the bytes past the mark are written but
            # not yet synced nor acknowledged: never served.
            end = min(end, self._flushedEnd - offset)
        length = max(0, min(maxSize, end))
        for start, _, _ in self._damaged:
            if offset < start < offset + length:
                # Up to the damage: the consumer's next fetch starts there
                # and is moved past it.
                length = start - offset
                break
        return MessageSlice(segment.file, offset, position, length)

    def nearestOffset(self, offset):
        if offset < self.minOffset:
            return self.minOffset
        if offset >= self._flushedEnd:
            return self._flushedEnd
        damage = self._damageAt(offset)
        if damage is not None:
            return damage[1]
        return self._segmentAt(offset).start

    def readRecords(self, offset, maxSize):
        messageSlice = self.slice(offset, maxSize)
        if messageSlice is None:
            return succeed(([], offset))
        d = deferToThreadPool(self._reactor, self._threadpool, self._verifiedRead, messageSlice)
        d.addCallback(self._reportCorruption, offset)
        return d

    @staticmethod
    def _verifiedRead(messageSlice):
        records = []
        consumed = 0
        try:
            for record, end in iterRecords(messageSlice.read()):
                records.append(record)
                consumed = end
        except InvalidRecord as e:
            return records, consumed, str(e)
        return records, consumed, None

    def _reportCorruption(self, result, offset):
        records, consumed, problem = result
        if problem is not None and not records:
            error = CorruptRecord(self.topic, self.partition, offset + consumed, problem)
            self.log.error("{error}; not served", error=errorText(error))
            raise error
        return records, offset + consumed

    # Appending

    def append(self, msgId, flag, body, checksum=None):
        d = Deferred()
        self.appendThen(msgId, flag, body, checksum, d.callback, d.errback)
        return d

    def appendThen(self, msgId, flag, body, checksum, stored, failed):
        if checksum is not None:
            # The put's checksum, verified against its body: not computed
            # a second time for the record.
            raw = encodeHeader(msgId, flag, body, checksum) + body
            self._enqueue(_Entry(None, raw, len(raw), 1, stored, failed))
        else:
            self._enqueue(_Entry(((msgId, flag, body),), None, HEADER_SIZE + len(body), 1,
                                 stored, failed))

    def appendRecordsThen(self, buffer, count, stored, failed):
        """
        C{count} records already encoded, with their checksums verified by
        the caller (a sync slave's C{sync}s of one read to this partition),
        as one entry: one job step, one callback.  The segment rolls
        between them where it would for one append per record, so a sync
        slave's segment files stay its master's.
        """
        self._enqueue(_Entry(None, buffer, len(buffer), count, stored, failed, recordwise=True))

    def appendBatch(self, messages, durable=True):
        d = Deferred()
        self.appendBatchThen(messages, durable, d.callback, d.errback)
        return d

    def appendBatchThen(self, messages, durable, stored, failed):
        messages = list(messages)
        self._enqueue(_Entry(messages, None, batchSize(messages), 1, stored, failed,
                             durable=durable))

    def whenFlushed(self, end):
        d = Deferred()
        self.whenFlushedThen(end, d.callback, d.errback)
        return d

    def whenFlushedThen(self, end, flushed, failed):
        """
        Call C{flushed} with L{None} once an fsync covers the bytes before
        offset C{end} (the flushed mark reaches it); nothing fsyncs for it:
        the next group commit round, L{flush} or a segment roll does.  Call
        C{failed} with a L{Failure} instead when an fsync fails or the
        segment file is lost, since a later fsync might then not cover
        those bytes.  Either may be called before this returns.
        """
        if end <= self._flushedEnd:
            flushed(None)
        elif self._closed:
            failed(Failure(StoreClosed("%r is closed" % (self,))))
        else:
            heapq.heappush(self._flushWaiters, (end, next(self._waiterOrder), flushed, failed))

    def awaitsFlush(self, offset, size):
        """
        Whether a read of C{size} bytes from C{offset} would reach records
        that are written but served only after the next flush: batches
        appended with C{durable=False} under group commit.
        """
        return (self.groupCommit and offset < self._lazyEnd
                and self._flushedEnd < min(self._lazyEnd, offset + size))

    def _fireFlushed(self):
        waiters = self._flushWaiters
        while waiters and waiters[0][0] <= self._flushedEnd:
            _call(heapq.heappop(waiters)[2], None)

    def _failFlushWaiters(self, failure):
        waiters, self._flushWaiters = self._flushWaiters, []
        # (end, order, flushed, failed): each order is unique, so sorting
        # never compares the callables.
        for _, _, _, failed in sorted(waiters):
            _call(failed, failure)

    def appendRecords(self, buffer, expectedOffset=None):
        buffer = bytes(buffer)
        try:
            count = recordsLength(buffer)
        except ValueError as e:
            return fail(e)
        d = Deferred()
        self._enqueue(_Entry(None, buffer, len(buffer), count, d.callback, d.errback,
                             expectedOffset))
        return d

    def _enqueue(self, entry):
        if self._closed:
            entry.failed(Failure(StoreClosed("%r is closed" % (self,))))
            return
        if self.readOnly is not None:
            entry.failed(Failure(PartitionReadOnly(self.topic, self.partition, self.readOnly)))
            return
        self._queue.append(entry)
        if self._busy:
            pass
        elif batchedWrites.depth:
            if not self._inBatch:
                self._inBatch = True
                batchedWrites.later(self._batchEnded)
        elif self._syncLoop.busy:
            # An fsync runs, so this put cannot be synced before the next
            # one: it is written when that one is over, in one write with
            # every other put that arrives meanwhile.
            pass
        else:
            self._kick()

    def _batchEnded(self):
        self._inBatch = False
        if not self._busy and not self._syncLoop.busy:
            self._kick()

    def flush(self):
        if self.groupCommit and self._lazyEnd <= self._flushedEnd:
            # Every put was acknowledged after its own fsync.
            return succeed(None)
        return self._whenWritten()

    def _whenWritten(self):
        """
        A Deferred firing once all that is queued now is written and synced.
        """
        d = Deferred()
        self._waiters.append(d)
        self._kick()
        return d

    def _kick(self):
        while not self._busy and (self._queue or self._waiters):
            job = self._buildJob()
            # Busy even for a job done on the spot: appends made by the
            # callbacks it fires must wait for the next job, not start one.
            self._busy = True
            if job.writesInline():
                try:
                    job.writeInline()
                except Exception:
                    self._fail(Failure(), job)
                    continue
            if (self.groupCommit and job.fsync and job.entries and not job.waiters
                    and not job.needsWrite()):
                self._handToSyncLoop(job)
                self._busy = False
                continue
            if self._syncing:
                # Offsets and acknowledgements stay in order: a job with
                # file work of its own (a roll, a new file, a flush waiter)
                # runs once the fsync loop has synced what it was given.
                self._held = job
                return
            self._runInThread(job)
            return

    def _runInThread(self, job):
        if job.needsThread():
            d = deferToThreadPool(self._reactor, self._threadpool, job.perform)
            d.addCallbacks(self._jobDone, self._jobFailed,
                           callbackArgs=(job,), errbackArgs=(job,))
            return
        self._applyProgress(job)
        self._finish(job)
        self._kick()

    # Group commit: the fsync rounds

    def _handToSyncLoop(self, job):
        """
        A group commit job whose records are written (on the reactor
        thread) waits for an fsync.  One fsync runs at a time: it covers
        every job written before it started; the puts that arrive while it
        runs are queued, and written in one write and synced by the next
        round, which starts as soon as this one is over (L{_takeRound}).
        The reactor hears of each round once, however many puts it covers.
        """
        self._applyProgress(job)
        job.syncEnd = job.lastSegment.end
        self._syncing += 1
        self._syncLoop.requestThen(partial(self._synced, job))

    def _takeRound(self):
        self._roundStarted = time.monotonic()
        return [self._segments[-1].file.fileno()], self._roundOver

    def _roundOver(self, error):
        """
        A round's fsync is over.  Write the puts that arrived meanwhile,
        so that the next round, which starts next, covers them.
        """
        if error is None:
            if self.fsyncObserver is not None:
                self.fsyncObserver(time.monotonic() - self._roundStarted)
            self._lastFlush = self._reactor.seconds()
        if self._held is None and not self._busy:
            self._kick()

    def _synced(self, job, error):
        """
        On the reactor thread: the fsync covering C{job} is over.
        Acknowledge its puts, or fail them when the fsync failed: nothing
        is acknowledged that is not on disk.  The last job the rounds owed
        releases the job held back for them.
        """
        self._syncing -= 1
        if error is None:
            self._flushedEnd = max(self._flushedEnd, job.syncEnd)
            if not self._syncing:
                self._unflushed = 0
            self._fire(job)
        else:
            self._failSync(error, job)
        if not self._syncing and self._held is not None:
            held, self._held = self._held, None
            self._runInThread(held)

    def _failSync(self, failure, job):
        """
        The fsync covering C{job} failed: its puts fail (their bytes stay
        in the log, unacknowledged, as after any failed group commit).
        """
        if isinstance(failure.value, OSError):
            self.ioErrors.error(
                "write-failed", "Syncing {store} failed; {count} queued append(s) "
                "fail: {error}", store=str(self), count=len(job.entries),
                error=str(failure.value))
        else:
            self.log.failure("Syncing {store} failed; {count} queued append(s) fail",
                             failure, store=str(self), count=len(job.entries))
        for entry in job.entries:
            _call(entry.failed, failure)
        for entry, error in job.rejected:
            _call(entry.failed, Failure(error))
        self._failFlushWaiters(failure)

    def _buildJob(self):
        entries, self._queue = self._queue, []
        waiters, self._waiters = self._waiters, []
        segment = self._segments[-1]
        size = segment.written
        steps = []
        write = None
        accepted = []
        rejected = []
        limit = GROUP_COMMIT_BYTES if self.groupCommit else JOB_BYTES
        maxSegmentSize = self.maxSegmentSize
        taken = 0
        count = 0
        durable = False
        lazyEnd = None
        # Run for every put: attributes read once into locals.
        for index, entry in enumerate(entries):
            if taken >= limit:
                self._queue = entries[index:]
                break
            entrySize = entry.size
            if entry.recordwise and size + entrySize >= maxSegmentSize:
                entry, tail = entry.splitAt(maxSegmentSize - size)
                if tail is not None:
                    entries.insert(index + 1, tail)
                    entrySize = entry.size
            taken += entrySize
            offset = segment.start + size
            if entry.expectedOffset is not None and entry.expectedOffset != offset:
                rejected.append((entry, OffsetMismatch(entry.expectedOffset, offset)))
                continue
            if write is None:
                write = _Write(segment, size)
                steps.append(write)
                written = write.entries
            entry.offset = offset
            written.append(entry)
            write.size += entrySize
            write.count += entry.count
            size += entrySize
            count += entry.count
            accepted.append(entry)
            if entry.durable:
                durable = True
            else:
                lazyEnd = offset + entrySize
            if size >= maxSegmentSize:
                new = Segment(self.directory, segment.start + size)
                steps.append(_Roll(segment, new, size))
                segment, size, write = new, 0, None
        if accepted and self.preallocate and size + self.preallocate // 2 > segment.allocated:
            end = min(size + self.preallocate, maxSegmentSize)
            if end > size:
                steps.append(_Preallocate(segment, size, end))
        if lazyEnd is not None:
            self._lazyEnd = lazyEnd
        unflushed = self._unflushed + count
        if self.groupCommit:
            # Batches appended with durable=False wait for a flush, not for
            # an fsync of their own.
            fsync = durable or bool(waiters and unflushed)
        else:
            fsync = bool(
                (waiters and unflushed)
                or unflushed > self.unflushThreshold
                or (
                    unflushed
                    and (self._reactor.seconds() - self._lastFlush) * 1000 > self.unflushInterval
                )
            )
        return _Job(steps, accepted, rejected, waiters, fsync, segment)

    def _applyProgress(self, job):
        """
        Record on the reactor thread what a job's completed steps changed.

        @return: the completed L{_Write} steps.
        """
        written = []
        count = 0
        for step in job.steps:
            if not step.done:
                break
            if isinstance(step, _Write):
                step.segment.written = step.position + step.size
                step.segment.allocated = max(step.segment.allocated, step.segment.written)
                written.append(step)
                count += step.count
            elif isinstance(step, _Preallocate):
                # Also after a failure: the next try is half a tail later.
                step.segment.allocated = step.end
                if step.error is not None:
                    self.ioErrors.error(
                        "preallocate-failed", "Writing zeros ahead of the records of "
                        "{store} failed; appends go on without them: {error}",
                        store=str(self), error=str(step.error))
            else:
                step.old.allocated = step.size
                self._segments.append(step.new)
                self._flushedEnd = step.new.start
                self._unflushed = 0
        self.messageCount += count
        if job.synced:
            if job.fsyncSeconds is not None and self.fsyncObserver is not None:
                self.fsyncObserver(job.fsyncSeconds)
            self._flushedEnd = self._segments[-1].end
            self._unflushed = 0
            self._lastFlush = self._reactor.seconds()
        else:
            self._unflushed += count
        return written

    def _jobDone(self, ignored, job):
        self._applyProgress(job)
        self._finish(job)
        self._kick()

    def _jobFailed(self, failure, job):
        self._fail(failure, job)
        self._kick()

    def _fail(self, failure, job):
        written = [entry for step in self._applyProgress(job) for entry in step.entries]
        if failure.check(SegmentLost):
            end = max([self._segments[-1].end]
                      + [entry.offset + entry.size for entry in job.entries])
            self._lost(failure.value, end)
        count = len(job.entries) - len(written)
        if failure.check(SegmentLost):
            pass  # logged by _lost
        elif isinstance(failure.value, OSError):
            self.ioErrors.error(
                "write-failed", "Writing to {store} failed; {count} queued append(s) "
                "fail: {error}", store=str(self), count=count, error=str(failure.value))
        else:
            self.log.failure(
                "Writing to {store} failed; {count} queued append(s) fail", failure,
                store=str(self), count=count
            )
        if job.fsync and not job.needsWrite():
            # The fsync failed: what it should have covered may be lost.
            self._failFlushWaiters(failure)
        # A failed write cut the file back to its last good record.
        self._segments[-1].allocated = self._segments[-1].written
        acknowledged = written if not self.groupCommit else []
        kept = set(map(id, acknowledged))
        for entry in job.entries:
            if id(entry) not in kept:
                _call(entry.failed, failure)
        for entry, error in job.rejected:
            _call(entry.failed, Failure(error))
        for waiter in job.waiters:
            waiter.errback(failure)
        for entry in acknowledged:
            _call(entry.stored, entry.offset)
        self._busy = False

    def _finish(self, job):
        self._fire(job)
        self._busy = False

    def _fire(self, job):
        with acknowledging:
            for entry in job.entries:
                try:
                    entry.stored(entry.offset)
                except Exception:
                    _callFailed()
            for entry, error in job.rejected:
                _call(entry.failed, Failure(error))
            if self._flushWaiters:
                self._fireFlushed()
            for waiter in job.waiters:
                waiter.callback(None)

    # Lost files

    def checkActiveSegment(self):
        """
        Check in a thread that the active segment file still has its name;
        when it is gone, make the partition read only.  Run by the manager
        on a timer, so a partition that takes no writes notices too.

        @return: a Deferred firing with the reason, or L{None}.
        """
        segment = self._segments[-1]
        if self.readOnly is not None or self._closed or segment.file is None:
            return succeed(None)

        def check():
            try:
                return segmentLost(segment)
            except OSError as e:
                return "unreadable (%s)" % (e,)

        def checked(how):
            if how is not None and self.readOnly is None and segment is self._segments[-1]:
                self._lost(SegmentLost(segment.path, how), segment.end)
                return how
            return None

        return deferToThreadPool(self._reactor, self._threadpool, check).addCallback(checked)

    def _lost(self, error, nextOffset):
        """
        The active segment is gone: take no more writes, now or after a
        restart (the damage marker), so that its offsets are never handed
        out again.
        """
        if self.readOnly is not None:
            return
        self.readOnly = "%s; offsets up to %d were handed out" % (error, nextOffset)
        self._failFlushWaiters(Failure(error))
        self.log.error(
            "{store}: {error}. The partition takes no more writes (puts are refused) "
            "until an operator repairs it (docs/disk-faults.md)",
            store=str(self), error=str(error),
        )
        d = deferToThreadPool(
            self._reactor, self._threadpool,
            writeDamageMarker, self.directory, str(error), nextOffset,
        )
        d.addErrback(lambda failure: self.log.error(
            "{store}: cannot record the damage in {directory}: {error}",
            store=str(self), directory=self.directory, error=str(failure.value)))

    # Retention

    def runDeletePolicy(self, now=None):
        if self.deletePolicy is None or self._deleting or self._closed:
            return succeed([])
        candidates = [s for s in self._segments[:-1] if s.end <= self._flushedEnd]
        if not candidates:
            return succeed([])
        if now is None:
            now = self._reactor.seconds()
        self._deleting = True
        d = deferToThreadPool(
            self._reactor, self._threadpool, self._dueSegments, candidates, now
        )
        d.addCallback(self._removeSegments)

        def done(result):
            self._deleting = False
            return result

        return d.addBoth(done)

    def _dueSegments(self, candidates, now):
        due = []
        for segment in candidates:
            if not self.deletePolicy.canDelete(segment.path, now):
                break
            due.append(segment)
        return due

    def _removeSegments(self, due):
        due = [s for s, current in zip(due, self._segments[:-1]) if s is current]
        if not due:
            return []
        del self._segments[: len(due)]
        for segment in due:
            self.log.info(
                "Deleting {path} with policy {policy}", path=segment.path,
                policy=repr(self.deletePolicy)
            )
        return deferToThreadPool(
            self._reactor, self._threadpool, self._processRemoved, due
        ).addCallback(self._logRemoved, due)

    def _processRemoved(self, due):
        problems = []
        for segment in due:
            try:
                self.deletePolicy.process(segment.path)
            except Exception as e:
                problems.append((segment.path, e))
        return problems

    def _logRemoved(self, problems, due):
        for path, error in problems:
            self.log.error(
                "Retention could not process {path}: {error}", path=path, error=errorText(error)
            )
        return [segment.start for segment in due]

    # Closing

    def close(self):
        if self._closed:
            return succeed(None)
        self._closed = True
        d = self._whenWritten()

        def cutTail(result):
            # The last segment once everything is written: the writes may
            # have rolled to a new one.
            last = self._segments[-1]
            if self.readOnly is not None or last.allocated <= last.written:
                return result
            cut = deferToThreadPool(self._reactor, self._threadpool, _cutTail, last)
            cut.addErrback(lambda failure: self.ioErrors.error(
                "cut-failed", "Cutting the preallocated tail of {store} failed; the "
                "next start reads its zeros as the tail: {error}",
                store=str(self), error=str(failure.value)))
            return cut.addCallback(lambda _: result)

        def closeFiles(result):
            for segment in self._segments:
                if segment.file is not None:
                    segment.file.close()
            return result

        return d.addBoth(cutTail).addBoth(closeFiles)
