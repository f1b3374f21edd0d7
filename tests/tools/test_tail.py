"""
The tail tool: cutting a followed file into messages (rotation,
truncation, delimiters), the bounded window and the saved position, and
the tool itself against a real broker found through a real ZooKeeper,
restarted while the file is appended and rotated.
"""

import collections
import os

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from metamorphosis.client.producer import SendResult
from metamorphosis.tools.tail import LogFile, StateFile, Tailer, startOffset
from tests.ha.processes import sleep
from tests.tools.support import (
    ToolProcess,
    brokerUrl,
    closedPort,
    readTopic,
    runTool,
    startBroker,
)
from tests.waiting import waitFor
from tests.zookeeper import uniqueRoot, zookeeperAddress


def append(path, data):
    with open(path, "ab") as f:
        f.write(data)


def drain(logFile):
    """
    Every message available now.
    """
    messages = []
    while True:
        message = logFile.nextMessage()
        if message is None:
            return messages
        messages.append(message[0])


class LogFileTests(TestCase):
    def setUp(self):
        self.path = self.mktemp()
        append(self.path, b"")

    def test_lines(self):
        """
        One message per complete line; an unterminated line waits.
        """
        logFile = LogFile(self.path, chunkSize=4)
        logFile.open(0)
        append(self.path, b"one\ntwo\nthr")
        self.assertEqual(drain(logFile), [b"one", b"two"])
        self.assertEqual(logFile.offset, 8)
        append(self.path, b"ee\n")
        self.assertEqual(drain(logFile), [b"three"])
        self.assertEqual(logFile.offset, 14)

    def test_startAtEnd(self):
        """
        Opened without an offset, only what is appended afterwards is read.
        """
        append(self.path, b"old\n")
        logFile = LogFile(self.path)
        logFile.open()
        append(self.path, b"new\n")
        self.assertEqual(drain(logFile), [b"new"])

    def test_linesPerMessage(self):
        """
        Up to N records per message, joined by the delimiter.
        """
        logFile = LogFile(self.path, separator=b"||", linesPerMessage=2)
        logFile.open(0)
        append(self.path, b"a||b||c||")
        self.assertEqual(drain(logFile), [b"a||b", b"c"])

    def test_longRecord(self):
        """
        A record longer than the maximum message size is split.
        """
        logFile = LogFile(self.path, maxMessageSize=4)
        logFile.open(0)
        append(self.path, b"abcdefghij\n")
        self.assertEqual(drain(logFile), [b"abcd", b"efgh", b"ij"])

    def test_rotation(self):
        """
        When the file is renamed away and a new one created, the rest of
        the old file (even unterminated) is read, then the new one from its
        start.
        """
        logFile = LogFile(self.path)
        logFile.open(0)
        append(self.path, b"1\n")
        self.assertEqual(drain(logFile), [b"1"])
        append(self.path, b"2\n3")
        os.rename(self.path, self.path + ".1")
        self.assertEqual(drain(logFile), [b"2"])
        append(self.path, b"4\n")
        self.assertEqual(drain(logFile), [b"3", b"4"])
        self.assertEqual(logFile.offset, 2)

    def test_truncation(self):
        """
        A file that shrinks is read again from its start.
        """
        logFile = LogFile(self.path)
        logFile.open(0)
        append(self.path, b"first line\n")
        self.assertEqual(drain(logFile), [b"first line"])
        with open(self.path, "wb") as f:
            f.write(b"x\n")
        self.assertEqual(drain(logFile), [b"x"])

    @settings(max_examples=30, deadline=None)
    @given(st.lists(st.binary(max_size=20), max_size=20), st.integers(1, 8), st.integers(1, 3))
    def test_everyByteOnce(self, writes, chunkSize, lines):
        """
        Whatever the writes and read sizes, the messages joined back are the
        file's complete records, and the offset is where they end.
        """
        path = self.mktemp()
        append(path, b"")
        logFile = LogFile(path, linesPerMessage=lines, chunkSize=chunkSize)
        logFile.open(0)
        messages = []
        for data in writes:
            append(path, data)
            messages.extend(drain(logFile))
        content = b"".join(writes)
        complete = content[:content.rfind(b"\n") + 1]
        self.assertEqual(b"".join(m + b"\n" for m in messages), complete)
        self.assertEqual(logFile.offset, len(complete))
        logFile.close()


class StartOffsetTests(TestCase):
    def test_choices(self):
        """
        The saved offset of the same file; the start of a file that
        replaced it; without a state, the end or the beginning.
        """
        path = self.mktemp()
        append(path, b"abc\n")
        logFile = LogFile(path)
        key = [os.stat(path).st_dev, os.stat(path).st_ino]
        self.assertEqual(startOffset(logFile, (key, 2), False), 2)
        self.assertEqual(startOffset(logFile, ([key[0], key[1] + 1], 2), False), 0)
        self.assertIsNone(startOffset(logFile, None, False))
        self.assertEqual(startOffset(logFile, None, True), 0)


class FakeProducer:
    """
    Records sends; the test answers them.
    """

    def __init__(self):
        self.sends = []

    def sendMessage(self, message):
        d = defer.Deferred()
        self.sends.append((message.data, d))
        return d


class TailerTests(TestCase):
    def setUp(self):
        self.path = self.mktemp()
        append(self.path, b"".join(b"%d\n" % i for i in range(10)))
        self.logFile = LogFile(self.path)
        self.logFile.open(0)
        self.state = StateFile(self.mktemp(), reactor)
        self.producer = FakeProducer()
        self.clock = Clock()
        self.tailer = Tailer(self.logFile, self.state, self.producer, "t", self.clock, window=3)

    def test_window(self):
        """
        No more than the window is unacknowledged; each acknowledgement
        lets one more message be read and sent.
        """
        self.tailer.startService()
        self.assertEqual([data for data, _ in self.producer.sends], [b"0", b"1", b"2"])
        self.clock.advance(1)
        self.assertEqual(len(self.producer.sends), 3)
        self.producer.sends[0][1].callback(SendResult(True))
        self.assertEqual(len(self.producer.sends), 4)
        self.logFile.close()

    def test_positionAfterAcknowledgedPrefix(self):
        """
        The saved position is the end of the acknowledged prefix: an
        acknowledgement after a gap does not move it.
        """
        async def check():
            self.tailer.startService()
            self.producer.sends[1][1].callback(SendResult(True))
            await waitFor(lambda: self.state.load() == (self.logFile.key, 0))
            self.assertEqual(self.tailer.position[1], 0)
            self.producer.sends[0][1].callback(SendResult(True))
            self.assertEqual(self.tailer.position[1], 4)
            await waitFor(lambda: self.state.load() == (self.logFile.key, 4))
        return ensureDeferred(check())

    def test_retry(self):
        """
        A message the broker refused is sent again after the retry delay;
        stopping waits for the answers in flight and saves the position.
        """
        async def check():
            self.tailer.startService()
            self.producer.sends[0][1].callback(SendResult(False, errorMessage="busy"))
            self.assertEqual(len(self.producer.sends), 3)
            self.clock.advance(self.tailer.retryDelay)
            self.assertEqual(self.producer.sends[-1][0], b"0")
            stopped = self.tailer.stopService()
            self.assertNoResult(stopped)
            for _, d in self.producer.sends[1:]:
                d.callback(SendResult(True))
            await stopped
            self.assertEqual(self.state.load(), (self.logFile.key, 6))
        return ensureDeferred(check())


class TailToolTests(TestCase):
    """
    The tool as a process, through ZooKeeper, against a broker process.
    """

    timeout = 120

    def test_restartAndRotation(self):
        """
        Lines written before the start, while it runs, across a rotation
        and while it is stopped all reach the broker exactly once.
        """
        async def check():
            root = uniqueRoot()
            broker = await startBroker(self, {"logs": 2}, zookeeperAddress(), root)
            path = os.path.abspath(self.mktemp())
            expected = []

            def write(count):
                lines = [b"line %d" % (len(expected) + i) for i in range(count)]
                expected.extend(lines)
                append(path, b"".join(line + b"\n" for line in lines))

            async def sent():
                topic = await readTopic(broker, "logs", 2)
                return sum(len(p) for p in topic.values()) >= len(expected)

            def start():
                return ToolProcess(self, "tail", "--zookeeper", zookeeperAddress(), "--zk-root", root,
                                   "--topic", "logs", "--from-beginning", "--window", "5",
                                   "--interval", "0.05", path)

            write(50)
            tail = start()
            write(50)
            await waitFor(sent)
            os.rename(path, path + ".1")
            write(20)
            await waitFor(sent)
            self.assertEqual(await tail.stop(), 0, tail.output)
            write(30)
            tail = start()
            write(10)
            await waitFor(sent)
            self.assertEqual(await tail.stop(), 0, tail.output)
            topic = await readTopic(broker, "logs", 2)
            received = collections.Counter(m for p in topic.values() for m in p)
            self.assertEqual(received, collections.Counter(expected))
            self.assertTrue(all(topic.values()), "both partitions used")
        return ensureDeferred(check())

    def test_brokerRestart(self):
        """
        Lines written while the broker is down are sent once it is back:
        none is lost (a put in flight at the crash may be stored twice).
        """
        async def check():
            broker = await startBroker(self, {"logs": 1})
            path = os.path.abspath(self.mktemp())
            lines = [b"%d" % i for i in range(60)]
            append(path, b"".join(line + b"\n" for line in lines[:20]))
            tail = ToolProcess(self, "tail", "--broker", brokerUrl(broker), "--topic", "logs",
                               "--from-beginning", "--interval", "0.05", path)

            async def received():
                return set((await readTopic(broker, "logs", 1))[0])
            await waitFor(lambda: ensureDeferred(received()).addCallback(
                lambda r: r == set(lines[:20])))
            await broker.kill()
            append(path, b"".join(line + b"\n" for line in lines[20:]))
            await sleep(1.5)
            await broker.start()
            await waitFor(lambda: ensureDeferred(received()).addCallback(
                lambda r: r == set(lines)))
            self.assertEqual(await tail.stop(), 0, tail.output)
        return ensureDeferred(check())

    def test_missingFile(self):
        """
        A file that does not exist: a message and status 1, no traceback.
        """
        async def check():
            path = self.mktemp()
            out, err, status = await runTool(
                "tail", "--broker", "127.0.0.1:%d" % closedPort(), "--topic", "t", path)
            self.assertEqual(status, 1)
            self.assertIn("cannot read %s" % (os.path.abspath(path),), err)
            self.assertNotIn("Traceback", err)
        return ensureDeferred(check())

    def test_unreachableBroker(self):
        """
        A broker that does not answer at start: a message and status 1.
        """
        async def check():
            path = self.mktemp()
            append(path, b"x\n")
            url = "meta://127.0.0.1:%d" % closedPort()
            out, err, status = await runTool(
                "tail", "--broker", url, "--topic", "t", "--timeout", "1", path)
            self.assertEqual(status, 1)
            self.assertIn("cannot connect to the broker %s" % (url,), err)
            self.assertNotIn("Traceback", err)
        return ensureDeferred(check())

    def test_directMode(self):
        """
        With --broker and --partitions the lines are spread over the
        partitions of that broker.
        """
        async def check():
            broker = await startBroker(self, {"logs": 2})
            path = os.path.abspath(self.mktemp())
            append(path, b"".join(b"%d\n" % i for i in range(10)))
            tail = ToolProcess(self, "tail", "--broker", brokerUrl(broker), "--partitions", "2",
                               "--topic", "logs", "--from-beginning", path)

            async def received():
                topic = await readTopic(broker, "logs", 2)
                return sorted(m for p in topic.values() for m in p)
            await waitFor(lambda: ensureDeferred(received()).addCallback(
                lambda r: len(r) == 10))
            self.assertEqual(await tail.stop(), 0, tail.output)
            self.assertEqual(await received(), sorted(b"%d" % i for i in range(10)))
        return ensureDeferred(check())
