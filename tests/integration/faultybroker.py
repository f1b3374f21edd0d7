"""
The broker (C{twistd metaq}) with disk faults that a test switches on and
off while it runs: a fault is on while a file named for it exists in the
broker's working directory.

    python -m tests.integration.faultybroker <twistd arguments>

C{fault-journal-enospc}: every write and fsync of the transaction journal
fails with ENOSPC, as on a full disk.

C{fault-journal-fsync-eio}: every fsync of the transaction journal fails
with EIO (its writes succeed), as on a disk that loses written data.

The journal's fsyncs go through the fsync provider it is given (the
kernel's asynchronous fsync, or a thread), so that provider is wrapped too.
"""

import errno
import os
import sys

from twisted.internet.defer import fail
from zope.interface import implementer

from metamorphosis.broker.store.interfaces import IFsync


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

    def fsyncFault(self):
        """
        The error an fsync fails with now, or L{None}.
        """
        if os.path.exists(self._trigger):
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if os.path.exists(self._fsyncTrigger):
            return OSError(errno.EIO, os.strerror(errno.EIO))
        return None

    def fsync(self, fd):
        error = self.fsyncFault()
        if error is not None:
            raise error
        return os.fsync(fd)


@implementer(IFsync)
class FaultyFsync:
    """
    An L{IFsync} failing as L{FaultyOs.fsync} does, else the wrapped one.
    """

    def __init__(self, fsync, faultyOs):
        self._fsync = fsync
        self._os = faultyOs

    def fsync(self, fd):
        error = self._os.fsyncFault()
        if error is not None:
            return fail(error)
        return self._fsync.fsync(fd)

    @property
    def roundsInThreads(self):
        return self._fsync.roundsInThreads

    def fsyncThen(self, fd, done):
        self.fsync(fd).addBoth(done)

    def keepAwake(self):
        self._fsync.keepAwake()

    def close(self):
        self._fsync.close()


def main():
    from metamorphosis.broker.transactions import journal

    faultyOs = FaultyOs("fault-journal-enospc", "fault-journal-fsync-eio")
    journal.os = faultyOs
    useFsync = journal.RedoLog.useFsync
    journal.RedoLog.useFsync = lambda log, fsync: useFsync(log, FaultyFsync(fsync, faultyOs))
    from twisted.scripts.twistd import run

    sys.argv = ["twistd"] + sys.argv[1:]
    run()


if __name__ == "__main__":
    main()
