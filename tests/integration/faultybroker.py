"""
The broker (C{twistd metaq}) with disk faults that a test switches on and
off while it runs: a fault is on while a file named for it exists in the
broker's working directory.

    python -m tests.integration.faultybroker <twistd arguments>

C{fault-journal-enospc}: every write and fsync of the transaction journal
fails with ENOSPC, as on a full disk.

C{fault-journal-fsync-eio}: every fsync of the transaction journal fails
with EIO (its writes succeed), as on a disk that loses written data.
"""

import errno
import os
import sys


class FaultyOs:
    """
    The C{os} module as a module that imported it sees it, with C{write},
    C{pwrite} and C{fsync} failing with ENOSPC while C{trigger} exists, and
    C{fsync} alone failing with EIO while C{fsyncTrigger} exists.
    """

    def __init__(self, trigger, fsyncTrigger):
        self._trigger = trigger
        self._fsyncTrigger = fsyncTrigger

    def __getattr__(self, name):
        return getattr(os, name)

    def _check(self):
        if os.path.exists(self._trigger):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def write(self, fd, data):
        self._check()
        return os.write(fd, data)

    def pwrite(self, fd, data, position):
        self._check()
        return os.pwrite(fd, data, position)

    def fsync(self, fd):
        self._check()
        if os.path.exists(self._fsyncTrigger):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return os.fsync(fd)


def main():
    from metamorphosis.broker.transactions import journal

    journal.os = FaultyOs("fault-journal-enospc", "fault-journal-fsync-eio")
    from twisted.scripts.twistd import run

    sys.argv = ["twistd"] + sys.argv[1:]
    run()


if __name__ == "__main__":
    main()
