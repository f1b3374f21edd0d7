"""
How a store asks for an fsync without blocking the reactor (L{IFsync}).

Under group commit every put waits for an fsync, so what it costs to start
one and to hear that it is over is on every put's path.  In a pool thread
that is two hand-offs per fsync: the thread woken to call C{fdatasync(2)}, then
the reactor woken by C{callFromThread} (a pipe write) while the thread
still holds the GIL.  On this project's 2-core test machine that costs
80-90 µs of a 210 µs round of a 1 KiB append and its fsync, and under load
the two threads fight for the GIL on every round.

Linux can run the fsync itself: an C{IOCB_CMD_FDSYNC} request submitted
with C{io_submit(2)} is queued to a kernel worker (the call returns at
once), and its completion is signalled on an C{eventfd} that the reactor
watches like a socket.  No Python thread is involved, and the same round
takes 125 µs (L{KernelFsync}).  It is the same C{vfs_fsync_range} as
C{fdatasync(2)}: what it reports (an EIO, an ENOSPC) is what
C{fdatasync(2)} would raise.

Both providers sync the data only (C{fdatasync}), as PostgreSQL's WAL and
Java's own transaction journal do: the records and the file's size, which
is what reading them back needs, but not the modification time.  Every
write changes that time, so a full C{fsync} also commits the inode to the
file system's journal whenever the time moved: on the 2-core test machine
a round of a 1 KiB write over zeros cost the machine 87-97 µs of CPU with
C{fdatasync} against 107-127 µs with C{fsync} (C{benchmarks/fsync.py}).

Where the kernel offers no such thing (another system, a sandbox refusing
C{io_setup}) the store falls back to a pool thread (L{ThreadFsync}).
The C{[system]} key C{fsyncMethod} chooses (docs/storage.md).

The kernel's worker is bound to the CPU that submitted the request, and
when every CPU is busy it waits there for the running task's time slice to
end: with both CPUs of the test machine running busy loops, its rounds took
3.98 ms (median) against 149 µs in a thread, and group commit with ten puts
in flight fell from 7,571-9,200 msg/s to 2,431-2,462.  So C{auto} does not
trust either for good: L{AdaptiveFsync} times every round and gives the
next ones to whichever has lately been the quicker.

A virtual disk is slow to wake: on the 2-core test machine a 7 KiB write
over zeros and its C{fdatasync} take 43-63 µs back to back, but 208-234 µs
after a 300 µs pause (the hypervisor's I/O thread stops polling its queue
and sleeps), and under group commit every round follows such a pause: the
broker parses and writes the next puts while the disk has nothing to do.
So while group commit rounds come one after the other, the kernel's
provider keeps the disk awake (L{KernelFsync.keepAwake}): when it has sent
the disk nothing for C{diskKeepAwakeMicros}, it sends it a read of one
4 KiB block with C{O_DIRECT} (no page cache), also through Linux AIO, whose
completion nobody waits for.
"""

import ctypes
import errno
import mmap
import os
import platform
import time
from collections import deque

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFDSet, IReadDescriptor
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from metamorphosis.broker.store.interfaces import IFsync
from metamorphosis.ratelog import RateLimitedLog

#: The Linux AIO system calls (io_setup, io_destroy, io_getevents,
#: io_submit) by machine: the C library has no wrappers for them.
_SYSCALLS = {
    "x86_64": (206, 207, 208, 209),
    "aarch64": (0, 1, 4, 2),
}

_IOCB_CMD_FDSYNC = 3
_IOCB_FLAG_RESFD = 1

#: Requests in flight at once; one per partition with unsynced puts, so a
#: broker with more busy partitions than this queues the rest in threads.
MAX_IN_FLIGHT = 1024

_IOCB_CMD_PREAD = 0

#: The block a keep-awake read reads (L{KernelFsync.keepAwake}): what
#: C{O_DIRECT} needs, aligned in memory, in the file and in size.
AWAKE_BLOCK = 4096

#: Seconds after the last fsync's end past which the disk is let sleep:
#: group commit rounds no longer follow each other.
AWAKE_TRAFFIC = 0.005

#: The most keep-awake reads in flight: past it, L{KernelFsync.keepAwake}
#: sends none until their completions are collected (by an fsync's end, or
#: by itself while no fsync runs), so they never fill the kernel's queue.
AWAKE_REAP = 64


def deferredOutcome(then, *args):
    """
    Call C{then(*args, done)}, where C{done} takes L{None} or a L{Failure}
    (L{IFsync.fsyncThen}'s shape): a Deferred firing with the one or
    failing with the other.  The C{fsync} beside an C{fsyncThen}.
    """
    d = Deferred()

    def done(result):
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)

    then(*args, done)
    return d


class _Iocb(ctypes.Structure):
    # struct iocb of <linux/aio_abi.h>, little-endian field order.
    _fields_ = [
        ("data", ctypes.c_uint64),
        ("key", ctypes.c_uint32),
        ("rwFlags", ctypes.c_int32),
        ("opcode", ctypes.c_uint16),
        ("priority", ctypes.c_int16),
        ("fd", ctypes.c_uint32),
        ("buffer", ctypes.c_uint64),
        ("length", ctypes.c_uint64),
        ("offset", ctypes.c_int64),
        ("reserved", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("resultFd", ctypes.c_uint32),
    ]


class _Event(ctypes.Structure):
    # struct io_event.
    _fields_ = [
        ("data", ctypes.c_uint64),
        ("obj", ctypes.c_uint64),
        ("result", ctypes.c_int64),
        ("result2", ctypes.c_int64),
    ]


class _Timespec(ctypes.Structure):
    _fields_ = [("seconds", ctypes.c_long), ("nanoseconds", ctypes.c_long)]


class FsyncUnavailable(Exception):
    """
    This system cannot run an fsync in the kernel asynchronously.
    """


@implementer(IFsync)
class ThreadFsync:
    """
    C{fdatasync(2)} in a pool thread: works everywhere.
    """

    def __init__(self, reactor, threadpool):
        self._reactor = reactor
        self._threadpool = threadpool
        # Counted on the reactor thread, from the request to its result: a
        # pool's own count of busy workers only moves once the worker has
        # the GIL, which is what a polling reactor keeps from it.
        self.roundsInThreads = 0

    def fsync(self, fd):
        self.roundsInThreads += 1
        return deferToThreadPool(self._reactor, self._threadpool, os.fdatasync, fd).addBoth(self._ended)

    def _ended(self, result):
        self.roundsInThreads -= 1
        return result

    def fsyncThen(self, fd, done):
        self.fsync(fd).addBoth(done)

    def keepAwake(self):
        # A thread's fsync costs more than the disk's wake-up.
        pass

    def close(self):
        pass


@implementer(IFsync, IReadDescriptor)
class KernelFsync:
    """
    C{fdatasync(2)} run by the kernel (Linux AIO), its completion read on
    the reactor thread from an C{eventfd}.

    @param fallback: the L{IFsync} used when the kernel takes no more
        requests (C{EAGAIN}: L{MAX_IN_FLIGHT} are running).
    @raise FsyncUnavailable: from the constructor, when this machine, its
        kernel or the reactor cannot.
    """

    log = Logger()
    _batch = 64

    #: Seconds without a request past which L{keepAwake} sends the disk a
    #: read; 0 (or no L{awakeFrom}) keeps it from doing so.
    awakeGap = 0.0
    #: Keep-awake reads sent.
    awakeReads = 0

    def __init__(self, reactor, fallback=None, clock=time.perf_counter):
        if not IReactorFDSet.providedBy(reactor):
            raise FsyncUnavailable("the reactor cannot watch a file descriptor")
        calls = _SYSCALLS.get(platform.machine())
        if calls is None or not hasattr(os, "eventfd"):
            raise FsyncUnavailable("no Linux AIO on %s" % (platform.machine(),))
        self._setup, self._destroy, self._getEvents, self._submit = calls
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.syscall.restype = ctypes.c_long
        self._context = ctypes.c_ulong(0)
        if self._libc.syscall(self._setup, MAX_IN_FLIGHT, ctypes.byref(self._context)) < 0:
            code = ctypes.get_errno()
            raise FsyncUnavailable("io_setup: %s" % (os.strerror(code),))
        self._eventFd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._reactor = reactor
        self._fallback = fallback
        self._pending = {}
        self._next = 0
        self._events = (_Event * self._batch)()
        self._noWait = _Timespec(0, 0)
        # io_submit copies the request, so one is filled in for each call
        # (building a ctypes structure costs more than the system call).
        self._request = _Iocb(opcode=_IOCB_CMD_FDSYNC, flags=_IOCB_FLAG_RESFD,
                              resultFd=self._eventFd)
        self._requests = (ctypes.POINTER(_Iocb) * 1)(ctypes.pointer(self._request))
        self._closed = False
        self._clock = clock
        # When a request was last submitted and an fsync last ended, and
        # the keep-awake reads not yet collected.
        self._lastRequest = self._lastEnd = float("-inf")
        self._awake = None
        self._awakeInFlight = 0
        reactor.addReader(self)

    @property
    def roundsInThreads(self):
        # Only those given to the fallback when the kernel took no more.
        return 0 if self._fallback is None else self._fallback.roundsInThreads

    def fsync(self, fd):
        return deferredOutcome(self.fsyncThen, fd)

    def fsyncThen(self, fd, done):
        if self._closed:
            done(Failure(FsyncUnavailable("closed")))
            return
        self._lastRequest = self._clock()
        self._next += 1
        key = self._next
        self._request.data = key
        self._request.fd = fd
        if self._libc.syscall(self._submit, self._context, 1, self._requests) != 1:
            code = ctypes.get_errno()
            if code == errno.EAGAIN and self._fallback is not None:
                # MAX_IN_FLIGHT requests are running already.
                self._fallback.fsync(fd).addBoth(done)
                return
            done(Failure(OSError(code, os.strerror(code))))
            return
        self._pending[key] = done

    def awakeFrom(self, fd, gap):
        """
        Keep the disk awake (L{keepAwake}) with reads of the first
        L{AWAKE_BLOCK} bytes of C{fd}, a file of the disk opened with
        C{O_DIRECT} that this provider now owns, when it has had no
        request for C{gap} seconds.
        """
        buffer = mmap.mmap(-1, AWAKE_BLOCK)
        request = _Iocb(opcode=_IOCB_CMD_PREAD, fd=fd, length=AWAKE_BLOCK,
                        buffer=ctypes.addressof(ctypes.c_char.from_buffer(buffer)))
        # data 0: no fsync's key, so its completion is only counted.
        self._awake = (fd, buffer, request, (ctypes.POINTER(_Iocb) * 1)(ctypes.pointer(request)))
        self.awakeGap = gap

    def keepAwake(self):
        """
        Group commit traffic goes on (an fsync ended within
        L{AWAKE_TRAFFIC}) and the broker is about to keep the disk waiting
        (a round ended with nothing to sync next, or requests arrived that
        it is about to parse): if the disk has had no request for
        L{awakeGap}, send it a read, so that the next fsync finds it awake.
        """
        if self._awake is None:
            return
        now = self._clock()
        if now - self._lastRequest < self.awakeGap or now - self._lastEnd > AWAKE_TRAFFIC:
            return
        if self._awakeInFlight >= AWAKE_REAP:
            if self._pending:
                # An fsync's end collects them.
                return
            # With no fsync running, every completion is a read's.
            self._collect()
            if self._awakeInFlight >= AWAKE_REAP:
                return
        self._lastRequest = now
        if self._libc.syscall(self._submit, self._context, 1, self._awake[3]) == 1:
            self.awakeReads += 1
            self._awakeInFlight += 1

    # IReadDescriptor

    def fileno(self):
        return self._eventFd

    def doRead(self):
        try:
            os.eventfd_read(self._eventFd)
        except BlockingIOError:
            return
        self._lastEnd = self._clock()
        self._collect()

    def _collect(self):
        """
        Take every completion there is: an fsync's is told to whoever asked
        for it, a keep-awake read's only counted.
        """
        while True:
            count = self._libc.syscall(self._getEvents, self._context, 0, self._batch,
                                       self._events, ctypes.byref(self._noWait))
            if count < 0:
                code = ctypes.get_errno()
                if code == errno.EINTR:
                    continue
                self.log.error("io_getevents failed: {error}", error=os.strerror(code))
                return
            for event in self._events[:count]:
                done = self._pending.pop(event.data, None)
                if done is None:
                    self._awakeInFlight -= 1
                    continue
                if event.result < 0:
                    code = -event.result
                    result = Failure(OSError(code, os.strerror(code)))
                else:
                    result = None
                try:
                    done(result)
                except Exception:
                    # The other completions of this read are still told.
                    self.log.failure("Handling an fsync completion failed")
            if count < self._batch:
                return

    def connectionLost(self, reason):
        pass

    def logPrefix(self):
        return "KernelFsync"

    def close(self):
        """
        Stop watching for completions and free the kernel context; called
        once no fsync is pending (every store is closed).
        """
        if self._closed:
            return
        self._closed = True
        self._reactor.removeReader(self)
        # Waits for the reads still in flight, which use the buffer.
        self._libc.syscall(self._destroy, self._context)
        os.close(self._eventFd)
        if self._awake is not None:
            fd, buffer = self._awake[:2]
            self._awake = None
            os.close(fd)
            buffer.close()


@implementer(IFsync)
class AdaptiveFsync:
    """
    C{fsyncMethod=auto}: each round goes to whichever of two providers, the
    kernel's and a thread's, has lately been the quicker.

    The time of every round, from the request to the call of its C{done},
    is kept, the last L{WINDOW} of each provider; the current provider
    gives way when the mean of its last rounds is more than L{LEAVE} times
    the other's.  The kernel's gives way only at twice the thread's: a
    round in a thread costs the broker's process three times the CPU (136-181
    against 40-57 µs on the test machine, C{benchmarks/fsync.py}), which on
    a machine short of CPU a small gain in latency does not pay back; the
    thread gives way once the kernel's is quicker by a fifth (on a quiet
    machine it is by two fifths or more).

    To keep the other's figure true, every so many rounds one goes to it
    (a probe): after L{FIRST_PROBE} rounds at first, twice as many after
    each probe, up to L{LAST_PROBE}; after a probe that would make the
    current give way, L{FIRST_PROBE} again, so that a provider whose
    figure is stale from a busy spell wins its rounds back within a few
    hundred rounds.  A probe to a kernel worker that waits for a busy CPU
    costs one slow round in L{LAST_PROBE}; a probe to a thread on a quiet
    machine, about 50 µs more than the kernel's round.

    The mean, not the median: on a busy machine the kernel's rounds are
    either quick or a whole time slice (a median of 196 µs, a p90 of
    4 ms), and a put waits for the mean.

    @param clock: the time of a round, in seconds.
    @param reactor: the clock of the log's intervals.
    @param log: where a switch is logged (at most a line a minute).
    @ivar current: the name of the provider that takes the rounds.
    @ivar rounds: rounds started, by provider name.
    @ivar switches: how often L{current} changed.
    """

    WINDOW = 16
    LEAVE = {"kernel": 2.0, "thread": 1.2}
    FIRST_PROBE = 16
    LAST_PROBE = 256

    log = Logger()

    def __init__(self, kernel, thread, clock=time.perf_counter, reactor=None, log=None):
        self._providers = {"kernel": kernel, "thread": thread}
        self._times = {name: _Window(self.WINDOW) for name in self._providers}
        self._clock = clock
        # A machine whose load comes and goes could switch often: one line
        # a minute says so, with the count of the others.
        self._switchLog = RateLimitedLog(log or self.log, clock=reactor)
        self.current = "kernel"
        self.rounds = {name: 0 for name in self._providers}
        self.switches = 0
        self._probeEvery = self._untilProbe = self.FIRST_PROBE

    def _other(self, name):
        return "thread" if name == "kernel" else "kernel"

    @property
    def roundsInThreads(self):
        return self._providers["thread"].roundsInThreads

    def fsync(self, fd):
        return deferredOutcome(self.fsyncThen, fd)

    def fsyncThen(self, fd, done):
        name = self.current
        self._untilProbe -= 1
        if self._untilProbe <= 0:
            name = self._other(name)
            self._untilProbe = self._probeEvery
        self.rounds[name] += 1
        started = self._clock()

        def finished(result):
            self._timed(name, self._clock() - started)
            done(result)

        self._providers[name].fsyncThen(fd, finished)

    def _timed(self, name, seconds):
        self._times[name].add(seconds)
        current = self.current
        other = self._other(current)
        otherMean = self._times[other].mean
        if otherMean is None:
            return
        currentMean = self._times[current].mean
        leave = self.LEAVE[current]
        if currentMean > otherMean * leave:
            self._switch(other, otherMean, currentMean)
        elif name == other:
            if seconds * leave < currentMean:
                self._probeEvery = self.FIRST_PROBE
            else:
                self._probeEvery = min(self._probeEvery * 2, self.LAST_PROBE)
            self._untilProbe = self._probeEvery

    def _switch(self, name, mean, previous):
        old = self.current
        self.current = name
        self.switches += 1
        self._probeEvery = self._untilProbe = self.FIRST_PROBE
        self._switchLog.info(
            "fsync-method",
            "Group commit fsyncs now run {method}: its last rounds took {mean:.0f} µs on "
            "average, against {previous:.0f} µs {old}",
            method=_PLACES[name], old=_PLACES[old], mean=mean * 1e6, previous=previous * 1e6)

    def keepAwake(self):
        if self.current == "kernel":
            self._providers["kernel"].keepAwake()

    def close(self):
        for provider in self._providers.values():
            provider.close()


class _Window:
    """
    The last C{size} round times of one provider and their mean, kept as a
    running total: the mean is read after every round, which under group
    commit with one put in flight is once per put.
    """

    def __init__(self, size):
        self._times = deque(maxlen=size)
        self._total = 0.0
        #: The mean of the times kept, or L{None} before the first.
        self.mean = None

    def add(self, seconds):
        times = self._times
        if len(times) == times.maxlen:
            self._total -= times[0]
        times.append(seconds)
        self._total += seconds
        self.mean = self._total / len(times)


_PLACES = {"kernel": "in the kernel (Linux AIO)", "thread": "in a thread"}


#: The file of the main data path whose first block keeps the disk awake.
AWAKE_FILE = ".keepawake"


def openAwakeFile(path):
    """
    The file at C{path}, made to hold one L{AWAKE_BLOCK} on the disk (zeros,
    synced), opened for reading with C{O_DIRECT}.  Runs in a thread.

    @raise OSError: when it cannot be made, or the file system refuses
        C{O_DIRECT} (tmpfs).
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        if os.fstat(fd).st_size < AWAKE_BLOCK:
            os.pwrite(fd, bytes(AWAKE_BLOCK), 0)
            os.fsync(fd)
    finally:
        os.close(fd)
    return os.open(path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)


def kernelFsyncOf(provider):
    """
    The L{KernelFsync} that C{provider} runs its fsyncs with (itself, or
    an L{AdaptiveFsync}'s), or L{None}.
    """
    if isinstance(provider, AdaptiveFsync):
        provider = provider._providers["kernel"]
    return provider if isinstance(provider, KernelFsync) else None


def describeFsync(provider):
    """
    Where the fsyncs of C{provider} run, in words for the log.
    """
    if isinstance(provider, AdaptiveFsync):
        return "in the kernel (Linux AIO), or in a thread while that is the quicker"
    if isinstance(provider, KernelFsync):
        return _PLACES["kernel"]
    return _PLACES["thread"]


def chooseFsync(method, reactor, threadpool):
    """
    The L{IFsync} for C{fsyncMethod}: C{thread}, C{kernel}, or C{auto}
    (L{AdaptiveFsync} over both where the kernel can, else a thread).

    @return: C{(provider, why)}: C{why} says why C{auto} fell back, or is
        L{None}.
    @raise FsyncUnavailable: C{kernel} was asked for and is not available.
    """
    thread = ThreadFsync(reactor, threadpool)
    if method == "thread":
        return thread, None
    try:
        kernel = KernelFsync(reactor, thread)
    except FsyncUnavailable as e:
        if method == "kernel":
            raise
        return thread, str(e)
    if method == "kernel":
        return kernel, None
    return AdaptiveFsync(kernel, thread, reactor=reactor), None

