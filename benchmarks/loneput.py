"""
What ONE put in flight costs the broker (issue 12, the single-sender rows).

For each flush policy it starts a fresh broker (as benchmarks/broker.py
does) and sends COUNT 1 KiB puts one at a time on one connection, then
prints, per put: the round trip, the CPU time of each broker thread
(precise run time from /proc/<pid>/task/<tid>/schedstat, user and system
from .../stat) and their voluntary and involuntary context switches.

    .venv/bin/python benchmarks/loneput.py --count 10000
    .venv/bin/python benchmarks/loneput.py --count 1000 --opcodes
    .venv/bin/python benchmarks/loneput.py --count 10000 --opcodes --inflight 10
    .venv/bin/python benchmarks/loneput.py --count 10000 --floor
    .venv/bin/python benchmarks/loneput.py --count 5000 --idle-poll 1000
    .venv/bin/python benchmarks/loneput.py --count 3000 --flush group --idle-poll 1000 --system fsyncMethod=thread

With --opcodes the broker's reactor thread counts the Python bytecodes each
function executes during the run (sys.settrace with opcode events, switched
on and off by signals): a per-put budget that does not depend on the
machine's load, unlike CPU time on a shared machine. The run is much slower
then (tracing), so under group commit the fsync loop's 2 ms wait for the
next put expires and its pool dispatches show up.

With --floor it measures, the same way, a minimal Twisted server making the
system calls of a lone put under unflushThreshold=1000 (C{recv}, C{pwrite},
C{stat}, C{send} of a put's reply) and nothing else: what Twisted's reactor,
loopback TCP and the system calls cost before any broker code runs.  With
C{--flush group} the floor also syncs each put before its reply, through
the broker's own kernel fsync (C{fsyncMethod=kernel}, over zeros written
ahead as the broker's preallocated tail is): what a lone put under group
commit costs on this machine before any broker code runs.

    .venv/bin/python benchmarks/loneput.py --count 5000 --floor --flush group
"""

import argparse
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from broker import startBroker  # noqa: E402 (benchmarks/broker.py)

from metamorphosis.protocol.records import checksum  # noqa: E402

#: Put on the broker's path with --opcodes: counts bytecodes per function of
#: the main thread between SIGUSR2 (start) and SIGUSR1 (stop, write the
#: counts to $LONEPUT_OPCODES, where "{pid}" becomes the process id).
OPCODE_COUNTER = '''
import collections, json, os, signal, sys
if os.environ.get("LONEPUT_OPCODES") and "twistd" in sys.argv[0]:
    _ops = collections.Counter()
    def _tracer(frame, event, arg):
        if event == "call":
            frame.f_trace_opcodes = True
        elif event == "opcode":
            code = frame.f_code
            _ops[code.co_filename.rsplit("site-packages/", 1)[-1] + ":" + code.co_name] += 1
        return _tracer
    def _start(*args):
        _ops.clear()
        sys.settrace(_tracer)
    def _stop(*args):
        sys.settrace(None)
        with open(os.environ["LONEPUT_OPCODES"].replace("{pid}", str(os.getpid())), "w") as f:
            json.dump(_ops, f)
    signal.signal(signal.SIGUSR2, _start)
    signal.signal(signal.SIGUSR1, _stop)
'''


#: The --floor server: frames puts and answers each with a reply of a put's
#: size after one pwrite and one stat, sent as the broker sends it (straight
#: to the socket when nothing is buffered).
FLOOR_SERVER = '''
import os, sys
from twisted.internet import protocol, reactor
from metamorphosis.broker.store.fsync import KernelFsync
from metamorphosis.broker.tcpdirect import writeNow
path = os.path.join(sys.argv[2], "floor.data")
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
position = 0
syncs = None
if sys.argv[3] == "group":
    syncs = KernelFsync(reactor)
    zeros = bytes(1 << 20)
    for offset in range(0, 64 << 20, len(zeros)):
        os.pwrite(fd, zeros, offset)
    os.fsync(fd)
class Floor(protocol.Protocol):
    def connectionMade(self):
        self.transport.setTcpNoDelay(True)
        self.buffer = b""
    def dataReceived(self, data):
        global position
        self.buffer += data
        while True:
            end = self.buffer.find(b"\\r\\n")
            if end < 0:
                return
            tokens = self.buffer[:end].split(b" ")
            length = int(tokens[3])
            if len(self.buffer) < end + 2 + length:
                return
            body = self.buffer[end + 2:end + 2 + length]
            self.buffer = self.buffer[end + 2 + length:]
            os.pwrite(fd, body, position)
            position += length
            os.stat(path)
            reply = b"result 200 28 %s\\r\\n-5468931763453122 0 123456789" % tokens[-1]
            if syncs is None:
                writeNow(self.transport, reply)
            else:
                syncs.fsyncThen(fd, lambda result, reply=reply: writeNow(self.transport, reply))
factory = protocol.ServerFactory()
factory.protocol = Floor
reactor.listenTCP(int(sys.argv[1]), factory, interface="127.0.0.1")
reactor.run()
'''


def startFloor(directory, policy):
    """
    The --floor server on a free port, syncing each put before its reply
    when C{policy} is C{group}.
    """
    import subprocess

    from broker import awaitListening, freePort

    port = freePort()
    process = subprocess.Popen([sys.executable, "-c", FLOOR_SERVER, str(port), directory, policy])
    awaitListening(process, [("127.0.0.1", port)], "the floor server", 100)
    return process, port


def threadTimes(pid):
    """
    Per thread of C{pid}: name, run time (ns), user and system ticks,
    voluntary and involuntary context switches.
    """
    times = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        base = f"/proc/{pid}/task/{tid}"
        try:
            with open(base + "/stat") as f:
                stat = f.read()
            with open(base + "/schedstat") as f:
                runtime = int(f.read().split()[0])
            switches = {}
            with open(base + "/status") as f:
                for line in f:
                    if "ctxt_switches:" in line:
                        key, value = line.split(":")
                        switches[key] = int(value)
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        times[tid] = (stat[stat.index("(") + 1:stat.rindex(")")], runtime,
                      int(fields[11]), int(fields[12]),
                      switches.get("voluntary_ctxt_switches", 0),
                      switches.get("nonvoluntary_ctxt_switches", 0))
    return times


def lonePuts(port, count, topic="bench-lone", inflight=1):
    """
    C{count} puts of 1 KiB, each sent once the previous one is answered;
    with C{inflight} N, N at a time in one write, the next N once all N
    are answered (the lockstep of N client threads sharing a connection).

    @return: the elapsed seconds.
    """
    payload = os.urandom(1024)
    head = b"put %s 0 %d 0 %d " % (topic.encode(), len(payload), checksum(payload))
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = time.perf_counter()
        for first in range(0, count, inflight):
            batch = range(first, min(count, first + inflight))
            sock.sendall(b"".join(b"%s%d\r\n%s" % (head, opaque, payload) for opaque in batch))
            reply = b""
            answered = 0
            while answered < len(batch):
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("the broker closed the connection")
                reply += data
                while True:
                    line, crlf, body = reply.partition(b"\r\n")
                    if not crlf or len(body) < int(line.split(b" ")[2]):
                        break
                    if not reply.startswith(b"result 200 "):
                        raise RuntimeError(f"put failed: {reply[:200]!r}")
                    reply = body[int(line.split(b" ")[2]):]
                    answered += 1
        return time.perf_counter() - start


def report(before, after, count):
    ticks = os.sysconf("SC_CLK_TCK")
    total = Counter()
    for tid, (name, runtime, user, system, voluntary, involuntary) in sorted(after.items()):
        old = before.get(tid, (name, 0, 0, 0, 0, 0))
        run = (runtime - old[1]) / 1e3 / count
        if run < 0.5:
            continue
        user = (user - old[2]) / ticks * 1e6 / count
        system = (system - old[3]) / ticks * 1e6 / count
        print(f"  thread {tid:>7} {name:<10} cpu {run:6.1f} us/put (user {user:5.1f}, "
              f"system {system:5.1f})  switches/put: voluntary "
              f"{(voluntary - old[4]) / count:4.2f}, involuntary {(involuntary - old[5]) / count:4.2f}")
        total["run"] += run
    print(f"  broker cpu {total['run']:.1f} us/put")


@contextmanager
def countingOpcodes(directory, counts, enabled=True):
    """
    While entered (and C{enabled}), a broker started counts its bytecodes
    (L{OPCODE_COUNTER}, put in C{directory}) into the file C{counts}.
    """
    saved = dict(os.environ)
    if enabled:
        with open(os.path.join(directory, "sitecustomize.py"), "w") as f:
            f.write(OPCODE_COUNTER)
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [directory] + [p for p in [os.environ.get("PYTHONPATH")] if p])
        os.environ["LONEPUT_OPCODES"] = counts
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def opcodeReport(path, count, top, unit="put"):
    import json

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    with open(path) as f:
        ops = Counter({key.replace(root, ""): value for key, value in json.load(f).items()})
    print(f"  python bytecodes of the reactor thread: {sum(ops.values()) / count:.0f}/{unit}")
    byModule = Counter()
    for key, value in ops.items():
        byModule[key.rsplit(":", 1)[0]] += value
    for module, value in byModule.most_common(top):
        print(f"    {value / count:7.1f}  {module}")
    print("  functions:")
    for key, value in ops.most_common(top):
        print(f"    {value / count:7.1f}  {key}")


def main(args):
    if args.floor:
        for policy in args.flush:
            directory = tempfile.mkdtemp(prefix="metaq-loneput-")
            process, port = startFloor(directory, policy)
            calls = "recv + pwrite + stat + kernel fsync + send" if policy == "group" else \
                "recv + pwrite + stat + send"
            try:
                lonePuts(port, min(1000, args.count))
                before = threadTimes(process.pid)
                elapsed = lonePuts(port, args.count)
                after = threadTimes(process.pid)
                print(f"== floor, {policy} (Twisted, {calls}): {args.count} lone 1 KiB "
                      f"puts, {args.count / elapsed:.0f} msg/s, round trip "
                      f"{elapsed / args.count * 1e6:.0f} us")
                report(before, after, args.count)
            finally:
                process.terminate()
                process.wait(60)
                shutil.rmtree(directory, ignore_errors=True)
        return
    for policy in args.flush:
        directory = tempfile.mkdtemp(prefix="metaq-loneput-")
        counts = os.path.join(directory, "opcodes.json")
        with countingOpcodes(directory, counts, args.opcodes):
            process, addresses = startBroker(
                policy, directory,
                system=f"idlePollMicros={args.idle_poll}\n" + "".join(line + "\n" for line in args.system))
        port = addresses["plain"][1]
        try:
            lonePuts(port, min(1000, args.count), inflight=args.inflight)
            if args.opcodes:
                process.send_signal(signal.SIGUSR2)
                time.sleep(0.2)
            before = threadTimes(process.pid)
            elapsed = lonePuts(port, args.count, inflight=args.inflight)
            after = threadTimes(process.pid)
            if args.opcodes:
                process.send_signal(signal.SIGUSR1)
                time.sleep(0.5)
            shape = "lone" if args.inflight == 1 else f"{args.inflight}-at-a-time"
            print(f"== {policy}: {args.count} {shape} 1 KiB puts, {args.count / elapsed:.0f} msg/s, "
                  f"round trip {elapsed / args.count * 1e6:.0f} us")
            report(before, after, args.count)
            if args.opcodes:
                opcodeReport(counts, args.count, args.top)
        finally:
            process.terminate()
            process.wait(60)
            shutil.rmtree(directory, ignore_errors=True)


def parseArguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10000, help="puts per policy")
    parser.add_argument("--flush", type=lambda t: t.split(","), default=["default", "group"],
                        help="default and/or group, comma separated")
    parser.add_argument("--opcodes", action="store_true",
                        help="count the Python bytecodes the reactor thread runs per put")
    parser.add_argument("--top", type=int, default=25, help="rows of the bytecode report")
    parser.add_argument("--inflight", type=int, default=1,
                        help="puts sent at a time, in one write, the next ones once all are "
                             "answered (10: the Java client's 10 threads on one connection)")
    parser.add_argument("--idle-poll", type=int, default=0, metavar="MICROS",
                        help="the broker's idlePollMicros (docs/performance.md)")
    parser.add_argument("--system", action="append", default=[], metavar="KEY=VALUE",
                        help="a [system] line for the broker's server.ini (repeatable)")
    parser.add_argument("--floor", action="store_true",
                        help="measure a minimal Twisted server instead of the broker")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parseArguments(sys.argv[1:]))
