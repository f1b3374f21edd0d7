"""
Tests for L{metamorphosis.broker.store.fsync}: the kernel's asynchronous
fsync against real files on the real reactor, and the choice of provider.
"""

import errno
import os

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, succeed
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from metamorphosis.broker.store import fsync as fsync_module
from metamorphosis.broker.store.fsync import (
    AWAKE_BLOCK,
    AWAKE_FILE,
    AWAKE_REAP,
    AWAKE_TRAFFIC,
    AdaptiveFsync,
    FsyncUnavailable,
    KernelFsync,
    ThreadFsync,
    chooseFsync,
    describeFsync,
    kernelFsyncOf,
    openAwakeFile,
)
from metamorphosis.broker.store.interfaces import IFsync
from tests.waiting import waitFor


class CountingFsync:
    """
    An L{IFsync} fallback that runs C{os.fsync} on the spot and counts.
    """

    roundsInThreads = 0

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

    def test_roundsInThreads(self):
        """
        The kernel's rounds run in no thread; those given to its fallback
        may.
        """
        self.assertEqual(self.fsync.roundsInThreads, 0)
        fallback = CountingFsync()
        withFallback = KernelFsync(reactor, fallback)
        self.addCleanup(withFallback.close)
        fallback.roundsInThreads = 3
        self.assertEqual(withFallback.roundsInThreads, 3)

    def test_closeStopsWatching(self):
        self.fsync.close()
        self.assertNotIn(self.fsync, reactor.getReaders())
        self.failureResultOf(self.fsync.fsync(0), FsyncUnavailable)
        # Closing twice is harmless (the cleanup does it again).
        self.fsync.close()


class KeepAwakeTests(TestCase):
    """
    L{KernelFsync.keepAwake}: while fsyncs end one after the other, a disk
    that has had no request for C{awakeGap} is sent a read of the awake
    file's first block, through the same kernel context; its completion is
    only counted.  The clock is the test's.
    """

    def setUp(self):
        self.now = 100.0
        try:
            self.fsync = KernelFsync(reactor, clock=lambda: self.now)
        except FsyncUnavailable as e:
            raise self.skipTest("no kernel fsync here: %s" % (e,))
        self.addCleanup(self.fsync.close)
        try:
            fd = openAwakeFile(os.path.join(self.mktemp(), AWAKE_FILE))
        except OSError as e:
            raise self.skipTest("no O_DIRECT here: %s" % (e,))
        self.fsync.awakeFrom(fd, 0.0001)
        self.data = os.open(self.mktemp(), os.O_RDWR | os.O_CREAT)
        self.addCleanup(os.close, self.data)

    @inlineCallbacks
    def synced(self):
        """
        One fsync, ended: the traffic that lets the disk be kept awake.
        """
        os.pwrite(self.data, b"x", 0)
        yield self.fsync.fsync(self.data)

    def test_interface(self):
        self.assertTrue(verifyObject(IFsync, self.fsync))

    @inlineCallbacks
    def test_readAfterTheGap(self):
        """
        Once the gap has passed since the fsync was submitted, one read is
        sent, and no other until the gap has passed again; the next fsync's
        end collects its completion.
        """
        yield self.synced()
        self.fsync.keepAwake()
        self.assertEqual(self.fsync.awakeReads, 0)
        self.now += 0.00011
        self.fsync.keepAwake()
        self.fsync.keepAwake()
        self.assertEqual(self.fsync.awakeReads, 1)
        self.now += 0.00005
        self.fsync.keepAwake()
        self.assertEqual(self.fsync.awakeReads, 1)
        self.now += 0.00006
        self.fsync.keepAwake()
        self.assertEqual((self.fsync.awakeReads, self.fsync._awakeInFlight), (2, 2))
        yield self.synced()
        self.assertEqual(self.fsync._awakeInFlight, 0)

    @inlineCallbacks
    def test_asleepWithoutTraffic(self):
        """
        No read before any fsync ended, nor once none has for
        L{AWAKE_TRAFFIC}: an idle broker lets its disk sleep.
        """
        self.now += 1
        self.fsync.keepAwake()
        self.assertEqual(self.fsync.awakeReads, 0)
        yield self.synced()
        self.now += AWAKE_TRAFFIC + 0.001
        self.fsync.keepAwake()
        self.assertEqual(self.fsync.awakeReads, 0)

    @inlineCallbacks
    def test_collectedWithoutFsyncs(self):
        """
        At most L{AWAKE_REAP} reads are in flight while no fsync ends to
        collect them (the kernel's queue never fills with them); once they
        are done, the next call collects them and sends again.
        """
        yield self.synced()
        self.fsync.awakeGap = AWAKE_TRAFFIC / (4 * AWAKE_REAP)

        def keepAwake(times):
            for _ in range(times):
                self.now += self.fsync.awakeGap * 1.01
                self.fsync.keepAwake()

        keepAwake(AWAKE_REAP * 2)
        self.assertGreaterEqual(self.fsync.awakeReads, AWAKE_REAP)
        self.assertLessEqual(self.fsync._awakeInFlight, AWAKE_REAP)
        sent = self.fsync.awakeReads

        def sentAgain():
            keepAwake(1)
            return self.fsync.awakeReads > sent

        yield waitFor(sentAgain, what="a read once the others are done")
        self.assertLess(self.fsync._awakeInFlight, AWAKE_REAP)

    def test_offWithoutAFile(self):
        """
        A provider given no awake file sends no read.
        """
        fsync = KernelFsync(reactor)
        self.addCleanup(fsync.close)
        fsync._lastEnd = fsync._clock()
        fsync.keepAwake()
        self.assertEqual(fsync.awakeReads, 0)

    def test_awakeFile(self):
        """
        The awake file holds one block of zeros, made in a directory that
        did not exist; an existing one is left as it is.
        """
        path = os.path.join(self.mktemp(), "data", AWAKE_FILE)
        os.close(openAwakeFile(path))
        with open(path, "rb") as f:
            self.assertEqual(f.read(), bytes(AWAKE_BLOCK))
        with open(path, "r+b") as f:
            f.write(b"kept")
        os.close(openAwakeFile(path))
        with open(path, "rb") as f:
            self.assertEqual(f.read(4), b"kept")


class ThreadFsyncTests(TestCase):
    @inlineCallbacks
    def test_roundsInThreads(self):
        """
        A round counts as running in a thread from its request until its
        result is back on the reactor thread, failed or not.
        """
        pool = ThreadPool(1, 1)
        pool.start()
        self.addCleanup(pool.stop)
        provider = ThreadFsync(reactor, pool)
        path = self.mktemp()
        fd = os.open(path, os.O_RDWR | os.O_CREAT)
        self.addCleanup(os.close, fd)
        rounds = [provider.fsync(fd), provider.fsync(fd)]
        self.assertEqual(provider.roundsInThreads, 2)
        yield gatherResults(rounds)
        self.assertEqual(provider.roundsInThreads, 0)
        failed = provider.fsync(2**20)  # not open: EBADF
        self.assertEqual(provider.roundsInThreads, 1)
        yield self.assertFailure(failed, OSError)
        self.assertEqual(provider.roundsInThreads, 0)


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

    def chosen(self, method):
        """
        C{chooseFsync(method)} on the real reactor, where this machine can
        run the kernel's fsync (else the test is skipped).
        """
        try:
            KernelFsync(reactor).close()
        except FsyncUnavailable as e:
            self.skipTest(f"no kernel fsync here: {e}")
        provider, why = chooseFsync(method, reactor, ThreadPool())
        self.addCleanup(provider.close)
        self.assertIsNone(why)
        return provider

    def test_kernel(self):
        """
        C{kernel} takes the kernel's fsync for every round.
        """
        self.assertIsInstance(self.chosen("kernel"), KernelFsync)

    def test_autoAdapts(self):
        """
        Where the kernel's fsync can be used, C{auto} starts with it and
        keeps a thread's beside it (L{AdaptiveFsync}).
        """
        provider = self.chosen("auto")
        self.assertIsInstance(provider, AdaptiveFsync)
        self.assertEqual(provider.current, "kernel")
        self.assertEqual(describeFsync(provider),
                         "in the kernel (Linux AIO), or in a thread while that is the quicker")

    def test_unknownMachine(self):
        self.patch(fsync_module.platform, "machine", lambda: "vax")
        self.assertRaises(FsyncUnavailable, KernelFsync, reactor)

class WindowTests(SynchronousTestCase):
    """
    L{fsync_module._Window}: the running mean of the last rounds.
    """

    def test_empty(self):
        self.assertIsNone(fsync_module._Window(4).mean)

    @given(st.integers(1, 20), st.lists(st.floats(1e-6, 5.0), min_size=1, max_size=300))
    def test_meanOfLast(self, size, times):
        """
        After any rounds, the mean is that of the last C{size} of them.
        """
        window = fsync_module._Window(size)
        for seconds in times:
            window.add(seconds)
        last = times[-size:]
        self.assertAlmostEqual(window.mean, sum(last) / len(last), delta=1e-9)


class HeldFsync:
    """
    An L{IFsync} whose rounds end when the test says: each request is kept
    as C{(fd, done)}.
    """

    def __init__(self):
        self.requests = []
        self.closed = False
        self.roundsInThreads = 0
        self.awake = 0

    def fsyncThen(self, fd, done):
        self.requests.append((fd, done))

    def fsync(self, fd):
        raise NotImplementedError("the adaptive provider uses fsyncThen")

    def keepAwake(self):
        self.awake += 1

    def close(self):
        self.closed = True


class AdaptiveFsyncTests(SynchronousTestCase):
    """
    L{AdaptiveFsync} gives each round to the provider that has lately been
    the quicker, timing every round; the times here are set by the test.
    """

    def setUp(self):
        self.now = 0.0
        self.events = []
        self.kernel, self.thread = HeldFsync(), HeldFsync()
        self.fsync = AdaptiveFsync(self.kernel, self.thread, clock=lambda: self.now,
                                   reactor=Clock(), log=Logger(observer=self.events.append))
        self.results = []

    def round(self, kernel, thread, result=None):
        """
        Start one round and end it with C{result}, C{kernel} or C{thread}
        seconds later by the provider that runs it.

        @return: the name of that provider.
        """
        self.fsync.fsyncThen(7, self.results.append)
        provider, name, seconds = ((self.kernel, "kernel", kernel) if self.kernel.requests
                                   else (self.thread, "thread", thread))
        fd, done = provider.requests.pop()
        self.assertEqual(fd, 7)
        self.now += seconds
        done(result)
        return name

    def rounds(self, count, kernel, thread):
        """
        Run C{count} rounds one after the other (L{round}); the names of
        the providers that ran them.
        """
        return [self.round(kernel, thread) for _ in range(count)]

    def test_interface(self):
        self.assertTrue(verifyObject(IFsync, self.fsync))

    def test_kernelFirstThenAProbe(self):
        """
        The kernel's fsync takes the rounds from the start; the
        C{FIRST_PROBE}th goes to the thread, so that its time is known.
        """
        names = self.rounds(AdaptiveFsync.FIRST_PROBE, kernel=130e-6, thread=190e-6)
        self.assertEqual(names, ["kernel"] * (AdaptiveFsync.FIRST_PROBE - 1) + ["thread"])
        self.assertEqual(self.fsync.rounds, {"kernel": AdaptiveFsync.FIRST_PROBE - 1, "thread": 1})
        self.assertEqual(self.fsync.current, "kernel")
        self.assertEqual(len(self.results), AdaptiveFsync.FIRST_PROBE)

    def test_probesGrowApart(self):
        """
        While the thread stays the slower, each probe comes twice as many
        rounds after the one before, up to C{LAST_PROBE}.
        """
        names = self.rounds(2000, kernel=130e-6, thread=190e-6)
        probes = [i + 1 for i, name in enumerate(names) if name == "thread"]
        gaps = [b - a for a, b in zip(probes, probes[1:])]
        self.assertEqual(probes[0], AdaptiveFsync.FIRST_PROBE)
        self.assertEqual(gaps[:4], [32, 64, 128, 256])
        self.assertEqual(set(gaps[4:]), {AdaptiveFsync.LAST_PROBE})
        self.assertEqual(self.fsync.switches, 0)
        self.assertEqual(self.events, [])

    def test_busyCPUs(self):
        """
        When the kernel's rounds take a time slice, as when every CPU is
        busy, the first probe moves the rounds to the thread, and the
        switch is logged with both figures.
        """
        names = self.rounds(40, kernel=4e-3, thread=150e-6)
        self.assertEqual(names[AdaptiveFsync.FIRST_PROBE - 1], "thread")
        self.assertEqual(set(names[AdaptiveFsync.FIRST_PROBE:]) - {"kernel"}, {"thread"})
        self.assertEqual(names[AdaptiveFsync.FIRST_PROBE:AdaptiveFsync.FIRST_PROBE * 2 - 1],
                         ["thread"] * (AdaptiveFsync.FIRST_PROBE - 1))
        self.assertEqual(self.fsync.current, "thread")
        self.assertEqual(self.fsync.switches, 1)
        self.assertEqual(
            [formatEvent(event) for event in self.events],
            ["Group commit fsyncs now run in a thread: its last rounds took 150 µs on average, "
             "against 4000 µs in the kernel (Linux AIO)"])

    def test_backToTheKernel(self):
        """
        Once the kernel's probes are quicker again than the thread's
        rounds by a fifth, the rounds go back to it, within a few hundred.
        """
        self.rounds(40, kernel=4e-3, thread=150e-6)
        self.assertEqual(self.fsync.current, "thread")
        names = self.rounds(400, kernel=100e-6, thread=150e-6)
        self.assertEqual(self.fsync.current, "kernel")
        self.assertEqual(self.fsync.switches, 2)
        self.assertEqual(names[-10:], ["kernel"] * 10)

    def test_kernelKeptUnlessTwiceAsSlow(self):
        """
        A thread quicker than the kernel by less than half does not take
        the rounds: its rounds cost three times the CPU.
        """
        self.rounds(500, kernel=290e-6, thread=150e-6)
        self.assertEqual(self.fsync.current, "kernel")
        self.assertEqual(self.fsync.switches, 0)
        self.rounds(20, kernel=310e-6, thread=150e-6)
        self.assertEqual(self.fsync.current, "thread")

    def test_failurePassedOn(self):
        """
        A failed round's failure reaches C{done} as the provider gave it.
        """
        failure = Failure(OSError(errno.EIO, "Input/output error"))
        self.assertEqual(self.round(1e-4, 1e-4, failure), "kernel")
        self.assertIs(self.results[-1], failure)

    def test_fsync(self):
        """
        C{fsync} is the same with a Deferred.
        """
        d = self.fsync.fsync(7)
        fd, done = self.kernel.requests.pop()
        done(None)
        self.assertIsNone(self.successResultOf(d))

    def test_close(self):
        self.fsync.close()
        self.assertTrue(self.kernel.closed)
        self.assertTrue(self.thread.closed)

    def test_keepAwake(self):
        """
        The disk is kept awake by the kernel's provider while it has the
        rounds, not while a thread has them.
        """
        self.fsync.keepAwake()
        self.rounds(AdaptiveFsync.FIRST_PROBE * 2, kernel=3.0, thread=1.0)
        self.assertEqual(self.fsync.current, "thread")
        self.fsync.keepAwake()
        self.assertEqual((self.kernel.awake, self.thread.awake), (1, 0))

    def test_kernelOf(self):
        self.assertIs(kernelFsyncOf(self.fsync), None)
        self.assertIs(kernelFsyncOf(ThreadFsync(Clock(), None)), None)

    def test_roundsInThreads(self):
        """
        The rounds running in a thread are the thread provider's, whichever
        provider takes the rounds now.
        """
        self.assertEqual(self.fsync.roundsInThreads, 0)
        self.thread.roundsInThreads = 2
        self.assertEqual(self.fsync.roundsInThreads, 2)
