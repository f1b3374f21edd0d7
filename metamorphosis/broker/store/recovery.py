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

import json
import os
from dataclasses import dataclass, field

from metamorphosis.broker.store.segment import (
    FILE_SUFFIX,
    Segment,
    nameFromOffset,
    offsetFromName,
    openSegmentFile,
)
from metamorphosis.broker.store.verify import scanRecords
from metamorphosis.durable import replaceDurably

#: The file that keeps a partition read only across restarts once the
#: broker saw its active segment disappear (docs/disk-faults.md).
DAMAGE_MARKER = "partition.damaged"

# Files the store itself leaves in a partition directory besides segments.
_OWN_SUFFIXES = (".meta.arc", ".meta.zip", ".corrupt", DAMAGE_MARKER)


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

    @ivar damaged: C{(startOffset, endOffset, reason)} of the damaged
        ranges found in the last segment; their bytes stay in place and are
        never served.
    @ivar readOnly: why the partition must take no writes (its files are not
        whole), or L{None}.
    """

    segments: list
    messageCount: int
    findings: list = field(default_factory=list)
    damaged: list = field(default_factory=list)
    readOnly: str = None


def _listSegments(directory, findings):
    """
    The segment files of C{directory} as C{(start, name)}, sorted, with a
    finding for every file that does not belong there.
    """
    segments = []
    for name in sorted(os.listdir(directory)):
        start = offsetFromName(name)
        if start is not None:
            # Even when it is not a regular file: a segment that cannot be
            # opened must make the partition read only, not be skipped.
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
    """
    Open the segment files.

    @return: C{(segments, unreadable)}: the opened L{Segment}s and the
        C{(path, error)} of each file that could not be opened.
    """
    opened = []
    unreadable = []
    for start, name in names:
        path = os.path.join(directory, name)
        try:
            file = openSegmentFile(path)
            size = os.fstat(file.fileno()).st_size
        except OSError as e:
            unreadable.append((path, e.strerror or str(e)))
            continue
        opened.append(Segment(directory, start, size, file))
    return opened, unreadable


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


def _scanLast(segment):
    """
    Check the records of the last segment.  Its file may end in the zero
    bytes written ahead of the records (the preallocated tail): from here
    on, its C{written} leaves them out.

    @return: the L{metamorphosis.broker.store.verify.ScanResult}.
    """
    result = scanRecords(segment.file.fileno(), segment.written, last=True)
    if result.unwrittenAt is not None:
        segment.written = result.unwrittenAt
    return result


def _recoverLast(segment, result, findings, readOnly):
    """
    Act on the check of the last segment: note its damaged ranges (their
    bytes stay, the valid records after them are served and appends go
    after them, so no offset that may have been acknowledged is handed out
    again) and cut a torn last record, unless the partition is read only.

    @return: C{(valid records, damaged ranges)}.
    """
    fd = segment.file.fileno()
    damaged = []
    for d in result.damaged:
        damaged.append((segment.start + d.start, segment.start + d.end, d.reason))
        findings.append(
            Finding(
                "error",
                "Damaged records in {path}: {length} byte(s) from offset {offset} "
                "({reason}) are not served; consumers move on to offset {next}. The "
                "bytes are left in place",
                dict(path=segment.path, length=d.end - d.start,
                     offset=segment.start + d.start, reason=d.reason,
                     next=segment.start + d.end),
            )
        )
    if result.tornAt is not None and not readOnly:
        os.ftruncate(fd, result.tornAt)
        os.fsync(fd)
        segment.allocated = result.tornAt
        findings.append(
            Finding(
                "warn",
                "Recovered {path}: cut {cut} byte(s) of an incomplete last record at "
                "file position {position} (offset {offset}), a write cut short",
                dict(path=segment.path, cut=result.end - result.tornAt,
                     position=result.tornAt, offset=segment.start + result.tornAt),
            )
        )
        segment.written = result.tornAt
    elif result.tornAt is not None:
        segment.written = result.tornAt
    return result.count, damaged


def readDamageMarker(directory):
    """
    The reason kept in the partition's damage marker, or L{None}.
    """
    path = os.path.join(directory, DAMAGE_MARKER)
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        marker = json.loads(text)
        return marker["reason"], int(marker["nextOffset"])
    except (ValueError, KeyError, TypeError):
        return "unreadable damage marker %r" % (text[:200],), None


def writeDamageMarker(directory, reason, nextOffset):
    """
    Record durably that a partition lost data it had acknowledged, up to
    C{nextOffset}: it stays read only across restarts until an operator
    acts (docs/disk-faults.md).  Blocking.
    """
    os.makedirs(directory, exist_ok=True)
    replaceDurably(os.path.join(directory, DAMAGE_MARKER),
                   json.dumps({"reason": reason, "nextOffset": nextOffset}).encode("utf-8"))


def loadPartition(directory, offsetIfCreate=0):
    """
    Open the segments of one partition directory, validating and if need be
    cutting a torn record from the last one; create the first segment if
    there is none.

    A partition whose files are not whole (a segment that cannot be opened,
    or a damage marker) is loaded read only, without changing any file.
    """
    findings = []
    segments, unreadable = _openAll(directory, _listSegments(directory, findings), findings)
    scan = None
    if segments:
        segments = _newestContiguousRun(directory, segments, findings)
        scan = _scanLast(segments[-1])
    readOnly = None
    if unreadable:
        readOnly = "segment file(s) cannot be opened: " + "; ".join(
            "%s (%s)" % (path, error) for path, error in unreadable)
    marker = readDamageMarker(directory)
    if marker is not None and readOnly is None:
        reason, nextOffset = marker
        markerPath = os.path.join(directory, DAMAGE_MARKER)
        if nextOffset is not None and segments and segments[-1].end >= nextOffset:
            # Restored from a copy: everything acknowledged is there again.
            os.remove(markerPath)
            findings.append(
                Finding(
                    "warn",
                    "Partition directory {directory} is whole again (its data reaches "
                    "offset {end}, at least the {next} recorded when it was damaged); "
                    "removed {marker} and it takes writes",
                    dict(directory=directory, end=segments[-1].end, next=nextOffset,
                         marker=markerPath),
                )
            )
        else:
            readOnly = "%s (recorded in %s)" % (reason, markerPath)
    if readOnly is not None:
        findings.append(
            Finding(
                "error",
                "Partition directory {directory} is not whole: {reason}. It is served "
                "read only: puts are refused until an operator repairs it "
                "(docs/disk-faults.md)",
                dict(directory=directory, reason=readOnly),
            )
        )
    damaged = []
    count = 0
    if segments:
        count, damaged = _recoverLast(segments[-1], scan, findings, readOnly is not None)
    elif readOnly is None:
        segment = Segment(directory, offsetIfCreate)
        segment.file = openSegmentFile(segment.path, create=True)
        segments = [segment]
    return Recovered(segments, count, findings, damaged, readOnly)
