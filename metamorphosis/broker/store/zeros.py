"""
Zero bytes written ahead of records: the partitions' last segments and the
transaction journal keep some on disk (C{preallocateSize}, docs/storage.md),
so that forcing the records later written over them commits no new file
size.
"""

import os

#: What the zeros are written from, a piece at a time.
_ZEROS = bytes(256 * 1024)


def writeZeros(fd, start, end):
    """
    Write zeros to C{fd} from file position C{start} to C{end}.  Blocking:
    in a thread.

    @raise OSError: they could not all be written (a full disk); the file
        is cut back to C{start} first, so that they take no room.
    """
    zeros = memoryview(_ZEROS)
    position = start
    try:
        while position < end:
            position += os.pwrite(fd, zeros[: end - position], position)
    except OSError:
        try:
            os.ftruncate(fd, start)
        except OSError:
            pass
        raise


def cutZeros(fd, end):
    """
    Cut C{fd} back to C{end}, the end of its records, when the zeros after
    them make it longer.  Blocking: in a thread.

    @return: whether it was cut (and so needs an fsync to stay cut).
    """
    if os.fstat(fd).st_size > end:
        os.ftruncate(fd, end)
        return True
    return False
