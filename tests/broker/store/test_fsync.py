"""
Tests for L{metamorphosis.broker.store.fsync}: the kernel's asynchronous
fsync against real files on the real reactor, and the choice of provider.
"""

import errno
import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, succeed
from twisted.internet.task import Clock
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from metamorphosis.broker.store import fsync as fsync_module
from metamorphosis.broker.store.fsync import (
    FsyncUnavailable,
    KernelFsync,
    ThreadFsync,
    chooseFsync,
)
from metamorphosis.broker.store.interfaces import IFsync


class CountingFsync:
    """
    An L{IFsync} fallback that runs C{os.fsync} on the spot and counts.
    """

    def __init__(self):
        self.calls = []

    def fsync(self, fd):
        self.calls.append(fd)
        os.fsync(fd)
        return succeed(None)

    def close(self):
        pass


class KernelFsyncTests(TestCase):
    def setUp(self):
        try:
            self.fsync = KernelFsync(reactor)
        except FsyncUnavailable as e:
            raise self.skipTest("no kernel fsync here: %s" % (e,))
        self.addCleanup(self.fsync.close)

    def openFile(self):
        fd = os.open(self.mktemp(), os.O_RDWR | os.O_CREAT)
        self.addCleanup(os.close, fd)
        return fd

    def test_interface(self):
        self.assertTrue(verifyObject(IFsync, self.fsync))

    @inlineCallbacks
    def test_fsync(self):
        """
        A written file is synced; the Deferred fires on the reactor thread
        through the eventfd the reactor watches.
        """
        fd = self.openFile()
        os.pwrite(fd, b"x" * 1024, 0)
        result = yield self.fsync.fsync(fd)
        self.assertIsNone(result)
        self.assertEqual(self.fsync._pending, {})

    @inlineCallbacks
    def test_fsyncThen(self):
        """
        C{fsyncThen} calls its callable with L{None} once synced; one that
        raises is logged and the other completions are still handled.
        """
        first, second = self.openFile(), self.openFile()
        os.pwrite(first, b"x", 0)
        os.pwrite(second, b"y", 0)
        broken, called = Deferred(), Deferred()

        def raising(result):
            # Told after the raise is logged, whatever the order of the two.
            reactor.callLater(0, broken.callback, result)
            raise RuntimeError("a bug in a store")

        self.fsync.fsyncThen(first, raising)
        self.fsync.fsyncThen(second, called.callback)
        results = yield gatherResults([broken, called])
        self.assertEqual(results, [None, None])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.fsync._pending, {})

    @inlineCallbacks
    def test_manyAtOnce(self):
        """
        Requests on many files at once all complete, each with its own
        Deferred.
        """
        fds = [self.openFile() for _ in range(50)]
        for fd in fds:
            os.pwrite(fd, b"y" * 100, 0)
        results = yield gatherResults([self.fsync.fsync(fd) for fd in fds])
        self.assertEqual(results, [None] * 50)

    @inlineCallbacks
    def test_kernelError(self):
        """
        What the kernel's fsync reports is the C{OSError} C{fsync(2)}
        would raise: a pipe cannot be synced (EINVAL).
        """
        readEnd, writeEnd = os.pipe()
        self.addCleanup(os.close, readEnd)
        self.addCleanup(os.close, writeEnd)
        with self.assertRaises(OSError) as caught:
            os.fsync(writeEnd)
        error = yield self.assertFailure(self.fsync.fsync(writeEnd), OSError)
        self.assertEqual(error.errno, caught.exception.errno)

    def test_badDescriptor(self):
        """
        A descriptor that is not open fails at once with EBADF.
        """
        fd = self.openFile()
        closed = os.dup(fd)
        os.close(closed)
        failure = self.failureResultOf(self.fsync.fsync(closed), OSError)
        self.assertEqual(failure.value.errno, errno.EBADF)

    @inlineCallbacks
    def test_fullQueueFallsBack(self):
        """
        When the kernel takes no more requests (EAGAIN), the fallback
        provider syncs the file instead.
        """
        self.patch(fsync_module, "MAX_IN_FLIGHT", 1)
        fallback = CountingFsync()
        small = KernelFsync(reactor, fallback)
        self.addCleanup(small.close)
        fd = self.openFile()
        results = yield gatherResults([small.fsync(fd) for _ in range(200)])
        self.assertEqual(results, [None] * 200)
        self.assertNotEqual(fallback.calls, [])
        self.assertLess(len(fallback.calls), 200)

    def test_closeStopsWatching(self):
        self.fsync.close()
        self.assertNotIn(self.fsync, reactor.getReaders())
        self.failureResultOf(self.fsync.fsync(0), FsyncUnavailable)
        # Closing twice is harmless (the cleanup does it again).
        self.fsync.close()


class ChooseTests(SynchronousTestCase):
    def test_thread(self):
        provider, why = chooseFsync("thread", reactor, ThreadPool())
        self.assertIsInstance(provider, ThreadFsync)
        self.assertTrue(verifyObject(IFsync, provider))
        self.assertIsNone(why)

    def test_autoFallsBack(self):
        """
        C{auto} takes a thread where the kernel's fsync cannot be used
        (here: a reactor that cannot watch a descriptor) and says why.
        """
        provider, why = chooseFsync("auto", Clock(), ThreadPool())
        self.assertIsInstance(provider, ThreadFsync)
        self.assertIn("cannot watch", why)

    def test_kernelRequired(self):
        self.assertRaises(FsyncUnavailable, chooseFsync, "kernel", Clock(), ThreadPool())

    def test_unknownMachine(self):
        self.patch(fsync_module.platform, "machine", lambda: "vax")
        self.assertRaises(FsyncUnavailable, KernelFsync, reactor)
