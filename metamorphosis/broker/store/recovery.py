"""
Loading a partition directory at start-up (Java C{MessageStore.loadSegments}
and C{FileMessageSet.recover}, docs/storage.md).

Everything here blocks on the file system and runs in a thread.  Instead of
logging from that thread it returns what it found as L{Finding}s, which the
manager logs on the reactor thread.

Where the Java broker refuses to start (a file name that is not a number, a
gap between segments) we log and carry on with what is valid: the newest
contiguous run of segments is served, older files that do not join it are
left untouched on disk for an operator to look at.
"""

import os
import struct
import zlib
from dataclasses import dataclass, field

from metamorphosis.broker.store.segment import (
    FILE_SUFFIX,
    Segment,
    nameFromOffset,
    offsetFromName,
    openSegmentFile,
)
from metamorphosis.protocol.records import HEADER_SIZE

_lengthAndChecksum = struct.Struct(">ii")

SCAN_CHUNK = 4 << 20

# Files the store itself leaves in a partition directory besides segments.
_OWN_SUFFIXES = (".meta.arc", ".meta.zip", ".corrupt")


@dataclass
class Finding:
    """
    Something worth a log line: C{level} is a L{twisted.logger.Logger}
    method name, C{format} a log format string filled from C{fields}.
    """

    level: str
    format: str
    fields: dict


@dataclass
class Recovered:
    """
    The usable segments of a partition directory, oldest first, the last
    one validated and open for appending.
    """

    segments: list
    messageCount: int
    findings: list = field(default_factory=list)


@dataclass
class ScanResult:
    """
    Where the valid records of a segment file end, how many there are, and
    why the scan stopped before the end of the file (L{None} at a clean end).
    """

    validEnd: int
    count: int
    reason: str = None
    torn: bool = False


def scanSegment(fd, size):
    """
    Validate the records of a segment file from its start: each record's
    length must fit the file and its CRC32 must match.

    @param fd: a file descriptor open for reading.
    @param size: the file's length.
    """
    position = 0
    count = 0
    buffer = b""
    bufferStart = 0
    view = memoryview(buffer)
    while True:
        inBuffer = position - bufferStart
        available = len(buffer) - inBuffer
        need = HEADER_SIZE
        if available >= HEADER_SIZE:
            length, crc = _lengthAndChecksum.unpack_from(buffer, inBuffer)
            if length < 0:
                return ScanResult(position, count, "negative record length %d" % (length,))
            need = HEADER_SIZE + length
            if available >= need:
                body = view[inBuffer + HEADER_SIZE : inBuffer + need]
                if zlib.crc32(body) & 0x7FFFFFFF != crc:
                    return ScanResult(position, count, "checksum mismatch")
                position += need
                count += 1
                continue
        if position + need > size:
            if position == size:
                return ScanResult(position, count)
            return ScanResult(
                position,
                count,
                "incomplete record (%d of %d bytes present)" % (size - position, need),
                torn=True,
            )
        more = os.pread(fd, max(SCAN_CHUNK, need - available), bufferStart + len(buffer))
        if not more:
            size = bufferStart + len(buffer)
            continue
        buffer = buffer[inBuffer:] + more
        bufferStart = position
        view = memoryview(buffer)


def _listSegments(directory, findings):
    """
    The segment files of C{directory} as C{(start, name)}, sorted, with a
    finding for every file that does not belong there.
    """
    segments = []
    for name in sorted(os.listdir(directory)):
        start = offsetFromName(name)
        if start is not None and os.path.isfile(os.path.join(directory, name)):
            segments.append((start, name))
        elif name.endswith(_OWN_SUFFIXES):
            continue
        else:
            findings.append(
                Finding(
                    "warn",
                    "Ignoring {name!r} in {directory}: not a segment file "
                    "(expected 20 digits and {suffix})",
                    dict(name=name, directory=directory, suffix=FILE_SUFFIX),
                )
            )
    segments.sort()
    return segments


def _openAll(directory, names, findings):
    opened = []
    for start, name in names:
        path = os.path.join(directory, name)
        try:
            file = openSegmentFile(path)
            size = os.fstat(file.fileno()).st_size
        except OSError as e:
            findings.append(
                Finding(
                    "error",
                    "Cannot open segment {path}: {error}; it is not served",
                    dict(path=path, error=e),
                )
            )
            continue
        opened.append(Segment(directory, start, size, file))
    return opened


def _newestContiguousRun(directory, segments, findings):
    """
    Keep the run of contiguous segments that ends with the newest one
    (where appends continue); report and close the rest.
    """
    first = len(segments) - 1
    while first > 0 and segments[first - 1].end == segments[first].start:
        first -= 1
    if first > 0:
        dropped = segments[:first]
        findings.append(
            Finding(
                "error",
                "Segments of {directory} are not contiguous: {previous} ends at "
                "offset {end} but the next segment starts at {start}. Serving "
                "only the {kept} segment(s) from offset {start}; {count} older "
                "file(s) left on disk untouched: {names}",
                dict(
                    directory=directory,
                    previous=nameFromOffset(segments[first - 1].start),
                    end=segments[first - 1].end,
                    start=segments[first].start,
                    kept=len(segments) - first,
                    count=len(dropped),
                    names=", ".join(nameFromOffset(s.start) for s in dropped),
                ),
            )
        )
        for segment in dropped:
            segment.file.close()
    return segments[first:]


def _recoverLast(segment, findings):
    """
    Validate the last segment and cut it after its last valid record,
    keeping a copy of what was cut when it was not a simple torn write.
    """
    fd = segment.file.fileno()
    size = segment.written
    result = scanSegment(fd, size)
    if result.validEnd < size:
        cut = size - result.validEnd
        kept = None
        if not result.torn:
            kept = "%s.%d.corrupt" % (segment.path, result.validEnd)
            with open(kept, "wb") as copy:
                copy.write(os.pread(fd, cut, result.validEnd))
        os.ftruncate(fd, result.validEnd)
        os.fsync(fd)
        findings.append(
            Finding(
                "warn",
                "Recovered {path}: cut {cut} byte(s) at file position {position} "
                "(offset {offset}) after {count} valid record(s): {reason}"
                + ("; the cut bytes are saved in {kept}" if kept else ""),
                dict(
                    path=segment.path,
                    cut=cut,
                    position=result.validEnd,
                    offset=segment.start + result.validEnd,
                    count=result.count,
                    reason=result.reason,
                    kept=kept,
                ),
            )
        )
    segment.written = result.validEnd
    return result.count


def loadPartition(directory, offsetIfCreate=0):
    """
    Open the segments of one partition directory, validating and if need be
    truncating the last one; create the first segment if there is none.
    """
    findings = []
    segments = _openAll(directory, _listSegments(directory, findings), findings)
    if segments:
        segments = _newestContiguousRun(directory, segments, findings)
        count = _recoverLast(segments[-1], findings)
    else:
        segment = Segment(directory, offsetIfCreate)
        segment.file = openSegmentFile(segment.path, create=True)
        segments = [segment]
        count = 0
    return Recovered(segments, count, findings)
