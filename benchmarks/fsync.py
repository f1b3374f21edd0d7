"""
What one group commit round costs with each fsync provider (docs/storage.md, fsyncMethod):
C{kernel}, C{thread}, and C{auto}, which moves its rounds to whichever of the two is the quicker
(the share it gave the kernel is printed).

A round is what a lone put under group commit waits for: append 1 KiB to a file, ask the
provider for an fsync, and hear on the reactor that it is over. For each provider this prints
the round's latency (median, p90) and two CPU figures per round: this process's (the reactor
and, for C{thread}, the pool thread) and the whole machine's. They differ by the kernel worker
that runs a C{kernel} fsync: the system charges it to no process, so a broker's own CPU figure
leaves it out.

Each provider runs two files: one appended to (each fsync also commits the file's new size to
the file system's journal) and one whose zeros were written and synced ahead (C{preallocateSize},
docs/storage.md: the fsync writes the data and nothing else).

C{--busy N} starts N busy loops (one per core saturates the machine) for the same measurement
under CPU contention: the kernel worker of a C{kernel} fsync runs on the CPU that submitted it
and waits there for its turn, where a thread may run on any CPU.

C{--streams N} runs N copies of the measurement at once, each in its own process with its own
file, as the two brokers of a sync pair on one machine do: what one disk gives to fsyncs that
overlap (docs/performance.md, "Sync replication under group commit").

    python benchmarks/fsync.py [--rounds 2000] [--repeat 3] [--busy 0] [--streams 1] [--directory DIR]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred

from metamorphosis.broker.store.fsync import (
    AdaptiveFsync,
    FsyncUnavailable,
    KernelFsync,
    ThreadFsync,
)

TICK = os.sysconf("SC_CLK_TCK")


def machineBusySeconds():
    """
    CPU seconds the machine (every CPU) spent not idle.
    """
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / TICK


def rounds(provider, fd, count, zeroed):
    """
    Run C{count} rounds one after the other: append, or write over the
    zeros from the start of the file when C{zeroed}.

    @return: a Deferred firing with the list of round latencies in seconds.
    """
    data = b"x" * 1024
    latencies = []
    finished = Deferred()
    position = [0]

    def start():
        if zeroed:
            os.pwrite(fd, data, position[0])
            position[0] += len(data)
        else:
            os.write(fd, data)
        started = time.perf_counter()

        def done(result):
            if result is not None:
                finished.errback(result)
                return
            latencies.append(time.perf_counter() - started)
            if len(latencies) < count:
                start()
            else:
                finished.callback(latencies)

        provider.fsyncThen(fd, done)

    start()
    return finished


def openFile(directory, zeroed, rounds):
    """
    A new file to write the rounds to; for C{zeroed}, with zeros on disk
    for the warm-up and the rounds.
    """
    fd = os.open(os.path.join(directory, "fsync-bench"), os.O_CREAT | os.O_WRONLY | os.O_TRUNC,
                 0o644)
    if zeroed:
        zeros = bytes(1 << 20)
        for position in range(0, (rounds + 200) * 1024, len(zeros)):
            os.pwrite(fd, zeros, position)
        os.fsync(fd)
    return fd


async def measure(providers, args):
    for _ in range(args.repeat):
        for name, provider in providers:
            for zeroed in (False, True):
                fd = openFile(args.directory, zeroed, args.rounds)
                try:
                    await rounds(provider, fd, min(200, args.rounds), zeroed)  # warm up
                    inKernel = dict(getattr(provider, "rounds", {}))
                    cpu, machine = time.process_time(), machineBusySeconds()
                    latencies = await rounds(provider, fd, args.rounds, zeroed)
                    cpu, machine = time.process_time() - cpu, machineBusySeconds() - machine
                    if inKernel:
                        inKernel = (provider.rounds["kernel"] - inKernel["kernel"]) / args.rounds
                finally:
                    os.close(fd)
                    os.unlink(os.path.join(args.directory, "fsync-bench"))
                latencies.sort()
                label = args.label + name + (" over zeros" if zeroed else " append")
                print(f"{label:28} round median {statistics.median(latencies) * 1e6:6.0f} us, "
                      f"p90 {latencies[int(len(latencies) * 0.9)] * 1e6:6.0f} us; CPU per round: "
                      f"this process {cpu / args.rounds * 1e6:5.0f} us, "
                      f"machine {machine / args.rounds * 1e6:5.0f} us"
                      + (f"; {inKernel:.0%} in the kernel" if inKernel != {} else ""), flush=True)


def startBusy(count):
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def stopBusy(processes):
    for process in processes:
        process.kill()
        process.wait()


def runStreams(argv, args):
    """
    Run C{args.streams} copies of this measurement at once, each in a
    directory of its own, and wait for them all.
    """
    busy = startBusy(args.busy)
    try:
        with tempfile.TemporaryDirectory(prefix="metaq-fsync-", dir=args.directory or ".") as top:
            streams = []
            for number in range(1, args.streams + 1):
                directory = os.path.join(top, str(number))
                os.mkdir(directory)
                streams.append(subprocess.Popen(
                    [sys.executable, __file__, *argv, "--streams", "1", "--busy", "0",
                     "--directory", directory, "--label", f"stream {number}: "]))
            codes = [stream.wait() for stream in streams]
    finally:
        stopBusy(busy)
    if any(codes):
        raise SystemExit(f"a stream failed: exit codes {codes}")


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--busy", type=int, default=0, help="busy loops to run meanwhile")
    parser.add_argument("--streams", type=int, default=1,
                        help="processes measuring at the same time, each with its own file")
    parser.add_argument("--directory", default=None,
                        help="where the file goes (default: a temporary directory)")
    parser.add_argument("--label", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.streams > 1:
        return runStreams(argv, args)
    temporary = None
    if args.directory is None:
        temporary = tempfile.TemporaryDirectory(prefix="metaq-fsync-", dir=".")
        args.directory = temporary.name
    thread = ThreadFsync(reactor, reactor.getThreadPool())
    providers = [("thread", thread)]
    try:
        providers[:0] = [("kernel", KernelFsync(reactor)),
                         ("auto", AdaptiveFsync(KernelFsync(reactor), thread, reactor=reactor))]
    except FsyncUnavailable as e:
        print(f"kernel: unavailable here ({e})")
    busy = startBusy(args.busy)
    print(f"{args.rounds} rounds of a 1 KiB append and its fsync, {args.busy} busy loop(s), "
          f"{os.cpu_count()} CPUs")
    outcome = []

    def run():
        d = ensureDeferred(measure(providers, args))
        d.addErrback(outcome.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    try:
        reactor.run()
    finally:
        stopBusy(busy)
        for _, provider in providers:
            provider.close()
        if temporary is not None:
            temporary.cleanup()
    if outcome:
        outcome[0].raiseException()


if __name__ == "__main__":
    main(sys.argv[1:])
