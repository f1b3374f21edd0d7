"""
Throughput of C{metaq-tail}: a file of COUNT lines of SIZE bytes is
published from its beginning to a broker (direct mode, 2 partitions, normal
flush policy) by the tool as a process, for each window size; the time runs
from the tool's start until its state file holds the end of the file (every
line acknowledged).  The tool's start-up (about half a second of Python
imports) is included.

    .venv/bin/python benchmarks/tail.py
    .venv/bin/python benchmarks/tail.py --count 200000 --size 200 --windows 100 1000
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from client import startBroker  # noqa: E402 (the client benchmark's broker launcher)


def tailOnce(url, path, window, expected):
    state = path + ".state.%d" % (window,)
    started = time.monotonic()
    tool = subprocess.Popen(
        [sys.executable, "-m", "metamorphosis.tools.tail", "--broker", url, "--partitions", "2",
         "--topic", "bench-tail-%d" % (window,), "--from-beginning", "--window", str(window),
         "--state", state, path],
        stderr=subprocess.DEVNULL)
    try:
        while True:
            if tool.poll() is not None:
                raise RuntimeError("the tail exited with %s" % (tool.returncode,))
            try:
                with open(state) as f:
                    if json.load(f)["offset"] == expected:
                        return time.monotonic() - started
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
    finally:
        tool.terminate()
        tool.wait()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--count", type=int, default=100000)
    parser.add_argument("--size", type=int, default=100, help="bytes per line, newline included")
    parser.add_argument("--windows", type=int, nargs="+", default=[10, 100, 1000])
    args = parser.parse_args(argv)
    directory = tempfile.mkdtemp(prefix="bench-tail-")
    broker = None
    try:
        path = os.path.join(directory, "app.log")
        line = b"x" * (args.size - 1) + b"\n"
        with open(path, "wb") as f:
            for _ in range(args.count):
                f.write(line)
        broker, url = startBroker(directory, unflushThreshold=1000, numPartitions=2)
        print("%d lines of %d bytes" % (args.count, args.size))
        for window in args.windows:
            elapsed = tailOnce(url, path, window, args.count * args.size)
            print("window %5d: %6.2f s  %8.0f msgs/s  %6.2f MB/s" % (
                window, elapsed, args.count / elapsed, args.count * args.size / elapsed / 1e6))
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
