"""
C{metaq dump}: the records of segment files, one line each (like
C{kafka-dump-log}).  It reads the files directly: run it on the broker's
host; the broker may be running (its files are only appended to).

    metaq dump data/t-0/00000000000000000000.meta
    metaq dump --print-data --max-records 10 data/t-0

A directory means each of its segment files in offset order.  Each line
gives the record's offset (the segment's start offset, from its name, plus
the position in the file), its size, message id, flag, attribute and, with
C{--print-data}, its data (escaped as Python bytes).  A record whose length
or checksum is wrong ends the dump of its file with a line saying why, and
the exit status is 1; an incomplete last record (a write cut short, which
the broker cuts at its next start) is reported the same way.  Zero bytes
that run to the end of a file are the tail the broker writes ahead of its
records (docs/storage.md): the dump of the file ends there, without a line.
"""

import os
import sys

from twisted.internet import threads
from twisted.python import usage

from metamorphosis.broker.store.segment import FILE_SUFFIX, offsetFromName
from metamorphosis.broker.store.verify import zerosFrom
from metamorphosis.protocol.records import (
    ATTRIBUTE_FLAG,
    HEADER_SIZE,
    InvalidRecord,
    Record,
    decodeHeader,
    iterRecords,
)
from metamorphosis.tools.cli import ToolError, Verbosity

CHUNK = 4 << 20


class Options(Verbosity, usage.Options):
    synopsis = "[options] SEGMENT_FILE_OR_PARTITION_DIRECTORY..."
    longdesc = "Print the records of segment files."
    optFlags = [
        ["print-data", None, "print each message's data"],
    ]
    optParameters = [
        ["max-records", "n", None, "stop after N records", int],
    ]

    def parseArgs(self, *paths):
        if not paths:
            raise usage.UsageError("give segment files or partition directories")
        self["paths"] = paths


def segmentFiles(path):
    """
    C{path} if it is a file, else the segment files of the directory in
    offset order.
    """
    if not os.path.isdir(path):
        return [path]
    names = [name for name in os.listdir(path) if offsetFromName(name) is not None]
    return [os.path.join(path, name) for name in sorted(names, key=offsetFromName)]


class SegmentReader:
    """
    The records of one segment file, read in order, 4 MiB at a time
    (blocking: use it in a thread).

    @ivar start: the segment's start offset (from its name).
    @ivar size: the file's size.
    @ivar problem: after L{records}, L{None} at a clean end, else
        C{(offset, why, torn)}: where reading stopped, why, and whether it
        is an incomplete last record (a write cut short) rather than a bad
        one.
    """

    def __init__(self, path):
        self.path = path
        self.start = offsetFromName(os.path.basename(path))
        if self.start is None:
            raise ToolError("%s: not a segment file (20 digits and %s)" % (path, FILE_SUFFIX))
        self.size = 0
        self.problem = None

    def records(self):
        """
        Yield C{(offset, record)} for each valid record, up to the end of
        the file or the first problem.

        @raise OSError: the file cannot be read.
        """
        start, position, buffer = self.start, 0, b""
        with open(self.path, "rb") as f:
            self.size = size = os.fstat(f.fileno()).st_size
            while True:
                data = f.read(CHUNK)
                buffer += data
                consumed = 0
                try:
                    for record, end in iterRecords(buffer):
                        if record == _ZERO_RECORD:
                            # An all-zero header: the tail, or zeroed damage.
                            at = position + consumed
                            if zerosFrom(f.fileno(), at, size) != at:
                                self.problem = (start + at, "zero-filled bytes", False)
                            return
                        yield start + position + consumed, record
                        consumed = end
                except InvalidRecord as e:
                    self.problem = (start + position + consumed, str(e), False)
                    return
                position += consumed
                buffer = buffer[consumed:]
                need = (HEADER_SIZE + decodeHeader(buffer)[0]
                        if len(buffer) >= HEADER_SIZE else HEADER_SIZE)
                if buffer and (not data or position + need > size):
                    # Cut short, or a length beyond the file: either way
                    # there is nothing more to read (nor to buffer up to).
                    self.problem = (start + position, "incomplete last record (%d of %d bytes)"
                                    % (size - position, need), True)
                    return
                if not data:
                    return


#: What a header of zero bytes decodes to (an empty body's checksum is 0).
_ZERO_RECORD = Record(0, 0, b"")


def dumpSegment(path, out, printData=False, limit=None):
    """
    Print the records of one segment file.

    @return: C{(records printed, problem or None)}.
    @raise OSError: the file cannot be read.
    """
    reader = SegmentReader(path)
    count = 0
    for offset, record in reader.records():
        line = "offset: %d size: %d id: %d flag: %d" % (offset, record.size, record.id,
                                                        record.flag)
        if record.flag & ATTRIBUTE_FLAG:
            line += " attribute: %r" % (record.attribute,)
        if printData:
            line += " data: %r" % (record.data,)
        print(line, file=out)
        count += 1
        if count == limit:
            return count, None
    if reader.problem is not None:
        offset, why, _ = reader.problem
        return count, "offset %d: %s" % (offset, why)
    return count, None


async def main(reactor, options, out=None, err=None):
    out, err = out or sys.stdout, err or sys.stderr
    limit = options["max-records"]
    status = 0
    for path in options["paths"]:
        for segment in segmentFiles(path):
            try:
                # In a thread: a segment is up to a gigabyte.
                count, problem = await threads.deferToThread(
                    dumpSegment, segment, out, options["print-data"], limit)
            except OSError as e:
                raise ToolError("%s: %s" % (segment, e.strerror or e))
            if problem is not None:
                print("%s: %s" % (segment, problem), file=out)
                print("%s: %s" % (segment, problem), file=err)
                status = 1
            if limit is not None:
                limit -= count
                if limit <= 0:
                    return status
    return status
