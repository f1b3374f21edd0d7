"""
Crash tests: a writer subprocess is killed with SIGKILL at random moments;
after each kill the partition is recovered as at broker start and checked
against what the writer had reported.
"""

import os
import random
import signal
import subprocess
import sys
import threading
import time

from twisted.trial.unittest import SynchronousTestCase

import tests
from metamorphosis.broker.store.recovery import loadPartition
from metamorphosis.protocol.records import decodeRecords

from .crashwriter import body, identify

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(tests.__file__)))


class Writer:
    """
    A running L{tests.broker.store.crashwriter} and the lines it printed.
    """

    def __init__(self, dataPath, round, threshold):
        env = dict(os.environ, PYTHONPATH=ROOT)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.broker.store.crashwriter", dataPath,
             str(round), str(threshold)],
            stdout=subprocess.PIPE, cwd=ROOT, env=env,
        )
        self.lines = []
        self.reader = threading.Thread(target=self._read)
        self.reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line.decode().split())

    def waitFor(self, predicate, timeout=60):
        deadline = time.monotonic() + timeout
        while not predicate(list(self.lines)):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("writer gave up: %r" % (self.lines[-3:],))
            time.sleep(0.005)

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.reader.join()
        self.process.stdout.close()


class CrashTests(SynchronousTestCase):
    rounds = 3

    def crashRounds(self, threshold, powerLoss=False):
        dataPath = os.path.abspath(self.mktemp())
        directory = os.path.join(dataPath, "test-0")
        rng = random.Random()
        end = 0
        for round in range(self.rounds):
            writer = Writer(dataPath, round, threshold)
            try:
                writer.waitFor(lambda lines: any(line[0] == "ack" for line in lines))
                time.sleep(rng.uniform(0.02, 0.3))
            finally:
                writer.kill()
            lines = writer.lines
            self.assertEqual(lines[0], ["ready", str(end)])
            acks = {int(line[1]): int(line[2]) for line in lines if line[0] == "ack"}
            hwm = max([int(line[1]) for line in lines if line[0] == "hwm"], default=0)
            # Appending resumed exactly at the end of the recovered log.
            self.assertEqual(acks[0], end)
            if powerLoss:
                self.tearUnflushedTail(directory, hwm, rng)
                acks = {i: offset for i, offset in acks.items() if offset < hwm}
            end = self.verify(directory, round, acks, hwm)

    def tearUnflushedTail(self, directory, hwm, rng):
        """
        Lose the last segment's bytes from anywhere after the flushed
        high-water mark, as losing power may do to written but unflushed
        data: cut them (an append whose new size was lost), or zero them
        (records written over the preallocated zeros that never left the
        page cache).
        """
        last = max(name for name in os.listdir(directory) if name.endswith(".meta"))
        path = os.path.join(directory, last)
        start = int(last[:20])
        size = os.path.getsize(path)
        keep = rng.randint(max(hwm - start, 0), size)
        if rng.random() < 0.5:
            os.truncate(path, keep)
        else:
            with open(path, "r+b") as f:
                f.seek(keep)
                f.write(bytes(size - keep))

    def verify(self, directory, round, acks, hwm):
        recovered = loadPartition(directory)
        data = b""
        for segment in recovered.segments:
            data += os.pread(segment.file.fileno(), segment.written, 0)
            segment.file.close()
        # Everything kept is valid records: nothing after a torn tail.
        records, consumed = decodeRecords(data)
        self.assertEqual(consumed, len(data))
        self.assertGreaterEqual(len(data), hwm)
        position = 0
        found = {}
        previous = (-1, -1)
        for record in records:
            identity = identify(record.data)
            self.assertEqual(record.body, body(*identity))
            self.assertEqual(record.id, identity[1])
            # Rounds in order, each one's indexes consecutive from 0.
            if identity[0] == previous[0]:
                self.assertEqual(identity[1], previous[1] + 1)
            else:
                self.assertEqual((identity[0], identity[1]), (previous[0] + 1, 0))
            previous = identity
            found[position] = identity
            position += record.size
        for index, offset in acks.items():
            self.assertEqual(found.get(offset), (round, index))
        return len(data)

    def test_countAndIntervalPolicy(self):
        """
        C{unflushThreshold=20}: every acknowledged (written) record and
        everything below the reported high-water mark survives.
        """
        self.crashRounds(20)

    def test_powerLossAfterKill(self):
        """
        C{unflushThreshold=20}, and after each kill the unflushed end of the
        last segment is torn at a random byte: everything below the reported
        high-water mark survives, the torn record and anything after it is
        cut, and the next round appends right after the last whole record.
        """
        self.crashRounds(20, powerLoss=True)

    def test_groupCommit(self):
        """
        Group commit: every acknowledged record survives.
        """
        self.crashRounds(0)
