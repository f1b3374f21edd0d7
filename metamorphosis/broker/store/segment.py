"""
Segment files and the views handed to readers.

A partition is a byte stream cut into files named by the absolute offset of
their first byte (20 zero-padded digits and C{.meta}, Java
C{MessageStore.nameFromOffset}), so a file's start plus a position in it is
the offset a consumer uses, exactly as on a Java broker.
"""

import os
import re

from metamorphosis.protocol.records import decodeRecords

FILE_SUFFIX = ".meta"

_segmentName = re.compile(r"^(\d{1,20})\.meta$")


def nameFromOffset(offset):
    """
    The file name of the segment starting at C{offset}.
    """
    return "%020d%s" % (offset, FILE_SUFFIX)


def offsetFromName(name):
    """
    The start offset a segment file name gives, or L{None} when C{name} is
    not a segment file name.
    """
    match = _segmentName.match(name)
    if match is None:
        return None
    return int(match.group(1))


class SegmentFile:
    """
    An open segment file, used only through positional reads and writes.

    The descriptor is closed when the last reference goes: retention drops a
    segment while a C{get} may still be sending from it, and closing it
    under that reader could hand its descriptor number to another file.
    """

    def __init__(self, fd):
        self._fd = fd
        self._identity = None

    def fileno(self):
        return self._fd

    def identity(self):
        """
        C{(st_ino, st_dev)} of the open file.  Read once: an open file keeps
        its inode (the number cannot be reused while it is open), so the
        check before each acknowledgement needs one C{stat} of the path
        and no C{fstat}.
        """
        if self._identity is None:
            opened = os.fstat(self._fd)
            self._identity = (opened.st_ino, opened.st_dev)
        return self._identity

    def close(self):
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    __del__ = close


def openSegmentFile(path, create=False):
    """
    Open a segment file.  Blocking: call it in a thread.
    """
    flags = os.O_RDWR | (os.O_CREAT if create else 0)
    return SegmentFile(os.open(path, flags, 0o644))


class Segment:
    """
    One segment file of a partition.

    All attributes are changed on the reactor thread only; the store's I/O
    thread writes through C{file} at positions the reactor assigned.

    @ivar start: absolute offset of the first byte.
    @ivar written: bytes of the file that hold records written by this
        process or found valid at recovery; readers never see more.
    @ivar allocated: how far the file is known to reach, records and the
        zero bytes written ahead of them (the preallocated tail); at least
        C{written}.  Only decides when to write more zeros: every write
        of zeros starts past the file's records.
    @ivar file: the open L{SegmentFile}, or L{None} before the I/O
        thread created it.  Slices hold a reference to it, so a segment
        removed by retention stays readable until the last slice is gone.
    """

    def __init__(self, directory, start, written=0, file=None):
        self.directory = directory
        self.start = start
        self.written = written
        self.allocated = written
        self.file = file
        # Joined once: every write checks that this name still is its file.
        self.path = os.path.join(directory, nameFromOffset(start))

    @property
    def end(self):
        return self.start + self.written

    def __repr__(self):
        return "<Segment %s written=%d>" % (self.path, self.written)


class MessageSlice:
    """
    A run of stored bytes of one segment file, as a C{get} sends them.

    The bytes may end in a partial record (the consumer keeps it for its
    next fetch) and are not verified: use L{records} or
    L{IMessageStore.readRecords} where a bad record must not pass.

    @ivar offset: the absolute offset of the first byte.
    @ivar length: number of bytes.
    @ivar position: where they start in the file of L{fileno}.
    """

    def __init__(self, file, offset, position, length):
        self._file = file
        self.offset = offset
        self.position = position
        self.length = length

    def fileno(self):
        return self._file.fileno()

    def read(self):
        """
        The bytes of the slice.  Reads the file on the calling thread: meant
        for small slices (filters, tests); large ones go by C{sendfile}.
        """
        return os.pread(self._file.fileno(), self.length, self.position)

    def records(self, verify=True):
        """
        Decode the complete records of the slice.

        @return: C{(records, consumed)} as L{decodeRecords}.
        @raise metamorphosis.protocol.records.InvalidRecord: a record fails
            its checksum.
        """
        return decodeRecords(self.read(), verify=verify)

    def __repr__(self):
        return "<MessageSlice offset=%d length=%d>" % (self.offset, self.length)
