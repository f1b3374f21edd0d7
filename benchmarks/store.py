"""
Message store throughput, beside the raw rate of the same file work.

    .venv/bin/python benchmarks/store.py [--dir DIR] [--scale 1.0] [--repeat 3]

For each scenario the store appends records of 100 B, 1 KiB and 16 KiB
bodies through L{MessageStoreManager} on the real reactor, and the same
records (the stored bytes, header included) are then written to a plain file
with one C{os.write} each and the same number of fsyncs, spread evenly: the
"raw" column is what the machine does with no store around it.

Scenarios:
  default     unflushThreshold=1000, unflushInterval=10000, 1000 puts in flight
  fsync-each  unflushThreshold=1, unflushInterval=0, one put at a time (an
              fsync per record)
  group-N     group commit (unflushThreshold=0) with N concurrent writers,
              each waiting for its put's acknowledgement before the next
  slice       reading the filled 1 KiB partition by slice(offset, 1 MiB) +
              read(), against pread of the segment file in 1 MiB chunks

The last three columns are CPU time per record (all threads of the process)
for the store and for the raw writes, and their ratio: on a shared machine
the wall-clock ratio suffers from every thread hand-off waiting for a core,
the CPU ratio shows the work the store adds.  Run it on the disk you care
about (--dir); the figures depend on the load of the machine, printed first.
"""

import argparse
import os
import shutil
import stat
import tempfile
import time
from collections import deque

from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.task import react

from metamorphosis.broker.config import MetaConfig, TopicConfig
from metamorphosis.broker.store import MessageStoreManager
from metamorphosis.protocol.records import encodeRecord

SIZES = [100, 1024, 16384]
MiB = 1024 * 1024


class FsyncCounter:
    """
    Counts fsyncs of regular files while installed.
    """

    def __init__(self):
        self.count = 0
        self._real = os.fsync

    def __call__(self, fd):
        if stat.S_ISREG(os.fstat(fd).st_mode):
            self.count += 1
        self._real(fd)

    def __enter__(self):
        os.fsync = self
        return self

    def __exit__(self, *exc):
        os.fsync = self._real


def rawWrite(path, records, fsyncs):
    """
    Write C{records} to a new file, one write each, with C{fsyncs} fsyncs
    spread evenly; the elapsed and CPU seconds.
    """
    every = len(records) // fsyncs if fsyncs else 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        start, cpu = time.perf_counter(), time.process_time()
        for index, record in enumerate(records, 1):
            os.write(fd, record)
            if every and index % every == 0:
                os.fsync(fd)
        return time.perf_counter() - start, time.process_time() - cpu
    finally:
        os.close(fd)
        os.remove(path)


async def pipelined(store, bodies, window=1000):
    """
    Keep up to C{window} puts in flight, as many producer connections would,
    with a callback on each as a broker has one to send the reply.  Puts go
    in chunks of half the window; before each chunk the driver waits for the
    chunk before the previous one, so the store always has work queued
    while a write runs.
    """
    acked = []
    chunk = window // 2
    pending = deque()
    for start in range(0, len(bodies), chunk):
        last = None
        for index in range(start, min(start + chunk, len(bodies))):
            last = store.append(index, 0, bodies[index]).addCallback(acked.append)
        pending.append(last)
        if len(pending) > 1:
            await pending.popleft()
    for d in pending:
        await d
    assert len(acked) == len(bodies)


async def concurrent(store, bodies, writers):
    work = iter(enumerate(bodies))

    async def writer():
        for index, body in work:
            await store.append(index, 0, body)

    await gatherResults([ensureDeferred(writer()) for _ in range(writers)])


def report(name, size, count, elapsed, rawElapsed, cpu, rawCpu, fsyncs):
    total = count * (size + 20) / MiB
    print(
        "%-11s %6d %7d %10.0f %9.1f %9.1f %6.0f%% %7d %7.1f %7.1f %5.0f%%"
        % (name, size, count, count / elapsed, total / elapsed, total / rawElapsed,
           100 * rawElapsed / elapsed, fsyncs, 1e6 * cpu / count, 1e6 * rawCpu / count,
           100 * rawCpu / cpu),
        flush=True,
    )


async def scenario(reactor, directory, name, size, count, threshold, interval, drive,
                   repeat, keep=False):
    """
    Run one scenario C{repeat} times, each followed by its raw
    counterpart, and report the best time of each.  With C{keep} the last
    run's manager and store are returned still open.
    """
    body = os.urandom(size)
    bodies = [body] * count
    records = [encodeRecord(index, 0, body) for index in range(count)]
    best = rawBest = cpuBest = rawCpuBest = float("inf")
    for run in range(repeat):
        dataPath = tempfile.mkdtemp(dir=directory)
        config = MetaConfig(dataPath=dataPath)
        config.topics["bench"] = TopicConfig(
            topic="bench", dataPath=dataPath, unflushThreshold=threshold,
            unflushInterval=interval,
        )
        manager = MessageStoreManager(config, reactor=reactor)
        await manager.startService()
        store = manager.getOrCreateStore("bench", 0)
        with FsyncCounter() as counter:
            start, cpu = time.perf_counter(), time.process_time()
            await drive(store, bodies)
            best = min(best, time.perf_counter() - start)
            cpuBest = min(cpuBest, time.process_time() - cpu)
        fsyncs = counter.count
        rawElapsed, rawCpu = rawWrite(os.path.join(directory, "raw"), records, fsyncs)
        rawBest, rawCpuBest = min(rawBest, rawElapsed), min(rawCpuBest, rawCpu)
        if keep and run == repeat - 1:
            break
        await manager.stopService()
        shutil.rmtree(dataPath)
    report(name, size, count, best, rawBest, cpuBest, rawCpuBest, fsyncs)
    return manager, store


async def sliceScenario(store):
    end = store.maxOffset
    start = time.perf_counter()
    offset = 0
    slices = 0
    while offset < end:
        piece = store.slice(offset, MiB)
        piece.read()
        offset += piece.length
        slices += 1
    elapsed = time.perf_counter() - start
    start = time.perf_counter()
    views = 0
    while time.perf_counter() - start < 0.5:
        for offset in range(0, end, MiB):
            store.slice(offset, MiB)
            views += 1
    viewRate = views / (time.perf_counter() - start)
    [path] = [segment.path for segment in store.segments]
    fd = os.open(path, os.O_RDONLY)
    start = time.perf_counter()
    position = 0
    while position < end:
        position += len(os.pread(fd, MiB, position))
    rawElapsed = time.perf_counter() - start
    os.close(fd)
    print(
        "slice+read  %d MiB in 1 MiB slices: %.0f MB/s (raw pread %.0f MB/s, %.0f%%); "
        "slice() alone %.0f calls/s"
        % (end // MiB, end / MiB / elapsed, end / MiB / rawElapsed,
           100 * rawElapsed / elapsed, viewRate),
        flush=True,
    )


async def main(reactor, options):
    directory = tempfile.mkdtemp(prefix="metaq-bench-", dir=options.dir)
    scale = options.scale
    print("load average %.2f %.2f %.2f on %d CPU(s); files in %s"
          % (*os.getloadavg(), os.cpu_count(), directory))
    print("%-11s %6s %7s %10s %9s %9s %7s %7s %7s %7s %6s"
          % ("scenario", "size", "records", "records/s", "MB/s", "raw MB/s", "ratio",
             "fsyncs", "cpu us", "raw us", "ratio"))
    repeat = options.repeat
    try:
        for size in SIZES:
            count = int(scale * min(100000, 32 * MiB // (size + 20)))
            manager, store = await scenario(
                reactor, directory, "default", size, count, 1000, 10000, pipelined,
                repeat, keep=size == 1024,
            )
            if size == 1024:
                await sliceScenario(store)
                await manager.stopService()
        for size in SIZES:
            await scenario(
                reactor, directory, "fsync-each", size, int(scale * 300), 1, 0,
                lambda store, bodies: concurrent(store, bodies, 1), repeat,
            )
        for writers in (1, 8, 64):
            for size in SIZES:
                count = int(scale * {1: 300, 8: 1500, 64: 6000}[writers])
                await scenario(
                    reactor, directory, "group-%d" % (writers,), size, count, 0, 10000,
                    lambda store, bodies: concurrent(store, bodies, writers), repeat,
                )
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=".", help="where to write (default: .)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply record counts (default 1.0)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per scenario; the best time counts (default 3)")
    options = parser.parse_args()
    react(lambda reactor: ensureDeferred(main(reactor, options)))
