"""
Checking the records of segment files: used by the recovery of the last
segment at start, by the background verification of the broker, and by
anyone who wants to check a partition directory (L{verifyPartition}, which
needs no running broker).

A segment is a run of records, each a 20-byte header (body length, masked
CRC32 of the body, message id, flag) and its body.  A record is valid when
its length is not negative, it fits in the file, its CRC matches, and its
header is not all zero bytes (a zero-filled block would otherwise read as
empty records).  Where a record is not valid the scan I{resynchronises}: it
looks byte by byte for the next position where a valid non-empty record
starts that is followed by the end of the data or by a header with a
believable length (a chance match of a 31-bit CRC and two believable
lengths is out of the question).  The bytes in between are a
I{damaged range}; the records after it are kept.

The active segment of a running broker ends in zero bytes written ahead of
its records (the preallocated tail, docs/storage.md), and so does the last
segment of a broker that was killed.  Scanned as the I{last} segment, zero
bytes running to the end of the file are that tail, not damage: the records
end where they start.  A record cut short by the crash lies in that tail
too, its bytes followed by zeros; it is reported torn, as an incomplete
record at the end of a file without a tail is.

Everything here blocks on the file system: call it in a thread.
"""

import os
import struct
import zlib
from dataclasses import dataclass, field

from metamorphosis.broker.store.segment import offsetFromName
from metamorphosis.protocol.records import HEADER_SIZE

#: Bytes read at once.  One MiB keeps the read syscalls negligible and the
#: memory of a scan small: a scan runs in a pool thread, and glibc keeps what
#: such a thread freed (its mmap threshold grows to the largest buffer freed),
#: so 4 MiB chunks left 8 MiB resident per scanning thread.
SCAN_CHUNK = 1 << 20

#: The largest body the resynchronisation believes in.  Bounding it keeps
#: the search through garbage linear: a random length is rarely below it.
MAX_RECORD_SIZE = 16 << 20

_lengthAndChecksum = struct.Struct(">ii")
_ZERO_HEADER = bytes(HEADER_SIZE)

_OK, _TORN, _BAD = range(3)


@dataclass
class DamagedRange:
    """
    Bytes of a segment that hold no valid record: C{start} and C{end} are
    file positions (L{SegmentReport} adds the segment's start offset).
    """

    start: int
    end: int
    reason: str


@dataclass
class ScanResult:
    """
    What a scan of a segment file found.

    @ivar count: valid records.
    @ivar damaged: the L{DamagedRange}s, in order.
    @ivar tornAt: the position of an incomplete last record that no valid
        record follows (a write cut short), or L{None}.
    @ivar unwrittenAt: where the zero bytes of a preallocated tail start
        (only in a scan of a last segment), or L{None}.
    @ivar end: where the scan ended (the file size).
    """

    count: int = 0
    damaged: list = field(default_factory=list)
    tornAt: int = None
    unwrittenAt: int = None
    end: int = 0

    @property
    def validEnd(self):
        """
        Where appending may continue: before a torn last record, else before
        the preallocated tail, else at the end of the scanned bytes.
        """
        if self.tornAt is not None:
            return self.tornAt
        return self.end if self.unwrittenAt is None else self.unwrittenAt


class Stopped(Exception):
    """
    Raised by a throttle to end a scan early.
    """


class _Window:
    """
    Positional reads of a file through one buffer of at least
    L{SCAN_CHUNK} bytes.
    """

    def __init__(self, fd, size, throttle):
        self.fd = fd
        self._size = size
        self._throttle = throttle
        self._start = 0
        self._buffer = b""

    def read(self, position, length):
        offset = position - self._start
        if offset < 0 or offset + length > len(self._buffer):
            want = min(max(SCAN_CHUNK, length), self._size - position)
            self._buffer = b""  # not two windows alive at once
            parts = []
            got = 0
            while got < want:
                part = os.pread(self.fd, want - got, position + got)
                if not part:
                    raise OSError("%d bytes expected at %d, the file ended"
                                  % (want - got, position + got))
                parts.append(part)
                got += len(part)
            if self._throttle is not None:
                self._throttle(got)
            self._buffer = b"".join(parts)
            self._start = position
            offset = 0
        return memoryview(self._buffer)[offset : offset + length]

    def peek(self, position, length):
        """
        A few bytes, read on their own when outside the buffer: the
        resynchronisation looks at many far-away headers and must not
        reload the buffer for each.
        """
        offset = position - self._start
        if 0 <= offset and offset + length <= len(self._buffer):
            return memoryview(self._buffer)[offset : offset + length]
        return os.pread(self.fd, length, position)


def _record(window, position, end):
    """
    Check the record at C{position}.

    @return: C{(_OK, next position)}, C{(_TORN, reason)} when it does not
        fit before C{end}, or C{(_BAD, reason)}.
    """
    if end - position < HEADER_SIZE:
        return _TORN, "incomplete record header (%d bytes)" % (end - position,)
    header = window.read(position, HEADER_SIZE)
    length, crc = _lengthAndChecksum.unpack_from(header)
    if length < 0:
        return _BAD, "negative record length %d" % (length,)
    if position + HEADER_SIZE + length > end:
        return _TORN, "incomplete record (%d of %d bytes present)" % (
            end - position, HEADER_SIZE + length)
    if header == _ZERO_HEADER:
        return _BAD, "zero-filled bytes"
    body = window.read(position + HEADER_SIZE, length)
    if zlib.crc32(body) & 0x7FFFFFFF != crc:
        return _BAD, "checksum mismatch"
    return _OK, position + HEADER_SIZE + length


def _plausibleLength(window, position, end, maxRecordSize, least=0):
    """
    Whether the length field at C{position} could be a record's: between
    C{least} and C{maxRecordSize}, and fitting before C{end}.
    """
    length, _ = _lengthAndChecksum.unpack_from(window.read(position, 8))
    return least <= length <= maxRecordSize and position + HEADER_SIZE + length <= end


def _startsRun(window, position, end, maxRecordSize):
    """
    Whether a record to resume at starts at C{position}: a non-empty body
    (empty ones are too easy to find in zeroed bytes) whose CRC matches,
    followed by the end, an incomplete header at the end, or a header whose
    length is believable (the next record may be damaged itself).
    """
    if end - position < HEADER_SIZE or not _plausibleLength(
        window, position, end, maxRecordSize, least=1
    ):
        return False
    length, _ = _lengthAndChecksum.unpack_from(window.read(position, 8))
    after = position + HEADER_SIZE + length
    if end - after >= HEADER_SIZE:
        # The cheap test first: the next length must be believable.
        nextLength, _ = _lengthAndChecksum.unpack_from(window.peek(after, 8))
        if not 0 <= nextLength <= maxRecordSize:
            return False
    return _record(window, position, end)[0] == _OK


def _resync(window, position, end, maxRecordSize):
    """
    The first position from C{position} on where a run of valid records
    starts, or L{None}.  The length test runs over a buffer directly
    (about a microsecond per damaged byte); only positions passing it get
    the full check.
    """
    unpack = _lengthAndChecksum.unpack_from
    while position < end:
        count = min(SCAN_CHUNK, end - position)
        buffer = bytes(window.read(position, count))
        last = len(buffer) - 8
        for at in range(0, count):
            if at <= last:
                length, _ = unpack(buffer, at)
                if not 0 < length <= maxRecordSize:
                    continue
            if _startsRun(window, position + at, end, maxRecordSize):
                return position + at
        position += count
    return None


def scanRecords(fd, size, start=0, maxRecordSize=MAX_RECORD_SIZE, throttle=None, last=False):
    """
    Check every record of a segment file from file position C{start}
    (which must be a record boundary) to C{size}.

    @param fd: a descriptor open for reading.
    @param throttle: called with the byte count of every read; it may sleep
        to bound the I/O rate, or raise L{Stopped}.
    @param last: the file is the last segment of its partition, which may
        end in a preallocated tail.
    @return: a L{ScanResult}.
    """
    window = _Window(fd, size, throttle)
    result = ScanResult(end=size)
    position = start
    while position < size:
        status, value = _record(window, position, size)
        if status == _OK:
            result.count += 1
            position = value
            continue
        resumed = _resync(window, position + 1, size, maxRecordSize)
        if resumed is not None:
            result.damaged.append(DamagedRange(position, resumed, value))
            position = resumed
            continue
        if status == _TORN and not _wholeWithBadLength(window, position, size):
            result.tornAt = position
        else:
            result.damaged.append(DamagedRange(position, size, value))
        break
    if last:
        _findTail(window, result, size)
    return result


def _findTail(window, result, size):
    """
    Tell a preallocated tail from damage in what ends the scan of a last
    segment: the bad or incomplete bytes that run to the end of the file.
    Where they are all zero they are the tail.  Where the zeros start
    inside the first record of them, that record was being written into
    the tail when the broker stopped (the sectors before the zeros reached
    the disk, the rest did not): torn.  Anything else is damage followed by
    the tail.
    """
    if result.tornAt is not None:
        problem = result.tornAt
    elif result.damaged and result.damaged[-1].end == size:
        problem = result.damaged[-1].start
    else:
        return
    zeros = zerosFrom(window.fd, problem, size)
    if zeros == size:
        return
    if zeros == problem:
        result.tornAt = None
        result.unwrittenAt = problem
    elif zeros - problem < HEADER_SIZE or _endsAfter(window, problem, zeros):
        result.tornAt = problem
    else:
        result.damaged[-1].end = zeros
        result.unwrittenAt = zeros
        return
    if result.damaged and result.damaged[-1].end == size:
        result.damaged.pop()


def _endsAfter(window, position, end):
    """
    Whether the length field of the record at C{position} makes it end
    after C{end}: bytes of it lie in the zeros.
    """
    length, _ = _lengthAndChecksum.unpack_from(window.peek(position, 8))
    return length >= 0 and position + HEADER_SIZE + length > end


def zerosFrom(fd, start, end):
    """
    Where the run of zero bytes of C{fd} that ends at file position C{end}
    starts (C{end} when the byte before it is not zero), never before
    C{start}.  Read backwards, one chunk at a time: the run is the tail, a
    few MiB at most.
    """
    position = end
    while position > start:
        begin = max(start, position - SCAN_CHUNK)
        chunk = os.pread(fd, position - begin, begin)
        if not chunk:
            return start  # cut meanwhile: nothing but zeros was there
        stripped = chunk.rstrip(b"\0")
        if stripped:
            return begin + len(stripped)
        position = begin
    return start


def _wholeWithBadLength(window, position, end):
    """
    Whether the bytes from C{position} to C{end} are one record whose length
    field alone is damaged: its CRC matches the rest of the bytes.  Such a
    record was written whole (and perhaps acknowledged), so it is damage to
    keep, not a torn write to cut.
    """
    if end - position <= HEADER_SIZE:
        return False
    _, crc = _lengthAndChecksum.unpack_from(window.read(position, 8))
    body = window.read(position + HEADER_SIZE, end - position - HEADER_SIZE)
    return zlib.crc32(body) & 0x7FFFFFFF == crc


@dataclass
class SegmentReport:
    """
    The check of one segment file; offsets are absolute.

    @ivar damaged: C{(startOffset, endOffset, reason)} tuples.
    @ivar tornAt: offset of an incomplete last record, or L{None}.
    @ivar unwrittenAt: offset where the preallocated tail of a last
        segment starts, or L{None}.
    @ivar error: why the file could not be read, or L{None}.
    """

    path: str
    start: int
    size: int = 0
    records: int = 0
    damaged: list = field(default_factory=list)
    tornAt: int = None
    unwrittenAt: int = None
    error: str = None

    @property
    def ok(self):
        return self.error is None and not self.damaged


def verifySegment(path, maxRecordSize=MAX_RECORD_SIZE, throttle=None, last=False):
    """
    Check one segment file (named by its start offset); C{last} when it is
    the last of its partition, which may end in a preallocated tail.

    @return: a L{SegmentReport}.
    """
    start = offsetFromName(os.path.basename(path)) or 0
    report = SegmentReport(path, start)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        report.error = str(e)
        return report
    try:
        report.size = os.fstat(fd).st_size
        result = scanRecords(fd, report.size, maxRecordSize=maxRecordSize, throttle=throttle,
                             last=last)
    except OSError as e:
        report.error = str(e)
        return report
    finally:
        os.close(fd)
    report.records = result.count
    report.damaged = [(start + d.start, start + d.end, d.reason) for d in result.damaged]
    if result.tornAt is not None:
        report.tornAt = start + result.tornAt
    if result.unwrittenAt is not None:
        report.unwrittenAt = start + result.unwrittenAt
    return report


def verifyPartition(directory, maxRecordSize=MAX_RECORD_SIZE, throttle=None):
    """
    Check every segment file of a partition directory and their contiguity.
    Read only: nothing is changed.  A torn last record is reported in
    L{SegmentReport.tornAt}; the broker cuts it at its next start.

    @return: C{(reports, problems)}: a L{SegmentReport} per segment file in
        offset order, and a list of texts for problems between files (gaps,
        overlaps).
    """
    names = sorted(
        (offsetFromName(name), name)
        for name in os.listdir(directory)
        if offsetFromName(name) is not None
    )
    reports = [
        verifySegment(os.path.join(directory, name), maxRecordSize, throttle,
                      last=index == len(names) - 1)
        for index, (_, name) in enumerate(names)
    ]
    problems = []
    for previous, report in zip(reports, reports[1:]):
        if previous.error is None and previous.start + previous.size != report.start:
            problems.append(
                "%s ends at offset %d but the next segment starts at %d"
                % (os.path.basename(previous.path), previous.start + previous.size,
                   report.start)
            )
    return reports, problems
