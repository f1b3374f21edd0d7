"""
Follow a log file as C{tail -F} does and publish what is appended to a
topic: one message per line (or per up to N lines, or per delimited
record).

    python -m metamorphosis.tools.tail --zookeeper 127.0.0.1:2181 --topic logs app.log
    python -m metamorphosis.tools.tail --broker meta://127.0.0.1:8123 --partitions 2 \\
        --topic logs --from-beginning app.log

The file is followed by name: when it is renamed away (rotation) the rest
of the old file is sent, then the new file is read from its start; when it
shrinks (truncation) it is read again from its start.  The position of the
last record the broker acknowledged (with everything before it) is kept in
a small state file, so that a restart resumes there: nothing acknowledged
is sent again and nothing unacknowledged is skipped.  At most C{--window}
messages are unacknowledged at a time; the file is not read further until
the broker catches up.
"""

import json
import os
from collections import deque

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger, LogLevel
from twisted.python import usage

from metamorphosis.client.errors import MetaClientError
from metamorphosis.client.message import Message
from metamorphosis.client.session import MetaClientConfig, MetaMessageSessionFactory
from metamorphosis.durable import replaceDurably
from metamorphosis.logfields import errorText
from metamorphosis.tools.cli import ToolError, Verbosity, checkBrokerSource, inheritShared, runAlias


def fileKey(stat):
    """
    What tells one file from another behind the same name.
    """
    return [stat.st_dev, stat.st_ino]


class LogFile:
    """
    A file followed by name, cut into messages.

    Reads are bounded (C{chunkSize} bytes at a time, one message at a
    time) and made on the reactor thread: a local file answers at once, and
    a poll stops as soon as the window is full.

    @ivar key: the L{fileKey} of the file being read.
    @ivar offset: the file offset just after the last message returned.
    """

    def __init__(self, path, separator=b"\n", linesPerMessage=1, maxMessageSize=1024 * 1024,
                 chunkSize=64 * 1024):
        self.path = path
        self.separator = separator
        self.linesPerMessage = linesPerMessage
        self.maxMessageSize = maxMessageSize
        self.chunkSize = chunkSize
        self.key = None
        self.offset = 0
        self._file = None
        self._buffer = b""

    def open(self, offset=None):
        """
        Open the file by name at C{offset} (by default its end).

        @raise OSError: it cannot be opened.
        """
        f = open(self.path, "rb")
        stat = os.fstat(f.fileno())
        if offset is None or offset > stat.st_size:
            offset = stat.st_size
        f.seek(offset)
        self.close()
        self._file, self.key, self.offset, self._buffer = f, fileKey(stat), offset, b""

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None

    def nextMessage(self):
        """
        The next message, reading chunks until there is one (at most about
        C{maxMessageSize} bytes, after which a message is cut anyway).

        @return: C{(payload, key, offset)}, C{offset} being where the
            message ends in the file C{key}; or L{None} when there is no
            complete record yet.
        """
        while True:
            message = self._frame()
            if message is not None:
                return message
            data = self._file.read(self.chunkSize)
            if not data:
                return self._endOfFile()
            self._buffer += data

    def _frame(self, final=False):
        separator, buffer = self.separator, self._buffer
        end = records = 0
        while records < self.linesPerMessage:
            found = buffer.find(separator, end)
            if found < 0 or found > self.maxMessageSize:
                break
            if records and found > self.maxMessageSize - len(separator):
                break
            end = found + len(separator)
            records += 1
        if records:
            payload = buffer[:end - len(separator)]
        elif len(buffer) >= self.maxMessageSize or (final and buffer):
            # A record too long for one message, or the unterminated end
            # of a rotated file: sent as it is.
            end = min(len(buffer), self.maxMessageSize)
            payload = buffer[:end]
        else:
            return None
        self._buffer = buffer[end:]
        self.offset += end
        return payload, self.key, self.offset

    def _endOfFile(self):
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            # Being rotated: keep the old file until the new one appears.
            return None
        if fileKey(stat) != self.key:
            # Rotated: finish the old file, then start the new one.
            last = self._frame(final=True)
            if last is not None:
                return last
        elif stat.st_size >= self.offset + len(self._buffer):
            return None
        # Rotated, or truncated (what is there now is new): from the start.
        try:
            self.open(0)
        except FileNotFoundError:
            return None
        return self.nextMessage()


class StateFile:
    """
    Where a tail resumes: the file key and offset, as JSON, replaced
    atomically.  Saves are written one at a time in a thread, the latest
    value winning.
    """

    log = Logger()

    def __init__(self, path, reactor):
        self.path = path
        self.reactor = reactor
        self._latest = None
        self._written = None
        self._writing = None

    def load(self):
        """
        @return: C{(key, offset)}, or L{None} without a state file.
        @raise ToolError: the file cannot be read.
        """
        try:
            with open(self.path, encoding="utf-8") as f:
                state = json.load(f)
            self._written = (state["key"], int(state["offset"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ToolError("unreadable state file %s: %s" % (self.path, e))
        return self._written

    def save(self, key, offset):
        """
        Write C{(key, offset)} soon, unless a later value comes first.
        """
        self._latest = (key, offset)
        if self._writing is None:
            self._writing = defer.ensureDeferred(self._writeLatest())

    def whenSaved(self):
        """
        @return: a Deferred that fires once the latest value is written (or
            its writing failed, which is logged).
        """
        if self._writing is None:
            return defer.succeed(None)
        waiter = defer.Deferred()
        self._writing.addBoth(lambda result: (waiter.callback(None), result)[1])
        return waiter

    async def _writeLatest(self):
        try:
            while self._latest != self._written:
                value = self._latest
                try:
                    await deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                            self._write, value)
                except OSError as e:
                    self.log.error("Cannot save the position to {path}: {error}",
                                   path=self.path, error=errorText(e))
                    return
                self._written = value
        finally:
            self._writing = None

    def _write(self, value):
        key, offset = value
        replaceDurably(self.path, json.dumps({"key": key, "offset": offset}).encode("utf-8"))


class _Pending:
    __slots__ = ("key", "offset", "acknowledged")

    def __init__(self, key, offset, acknowledged=False):
        self.key = key
        self.offset = offset
        self.acknowledged = acknowledged


class Tailer(service.Service):
    """
    Reads a L{LogFile} every C{interval} seconds (and whenever the window
    opens again) and sends its messages with C{producer}; a message the
    broker did not take is sent again after C{retryDelay} seconds.  The
    position saved in the L{StateFile} is the end of the longest
    acknowledged prefix of what was read.

    @ivar position: C{(key, offset)} of that end.
    """

    log = Logger()

    def __init__(self, logFile, state, producer, topic, reactor, window=100, interval=0.2,
                 retryDelay=1.0):
        self.logFile = logFile
        self.state = state
        self.producer = producer
        self.topic = topic
        self.reactor = reactor
        self.window = window
        self.interval = interval
        self.retryDelay = retryDelay
        self.position = None
        self._pending = deque()
        self._unacknowledged = 0
        self._sending = 0
        self._drained = None
        self._failing = False
        self._loop = task.LoopingCall(self.poll)
        self._loop.clock = reactor

    def startService(self):
        service.Service.startService(self)
        self.position = (self.logFile.key, self.logFile.offset)
        self.state.save(*self.position)
        self._loop.start(self.interval)

    def poll(self):
        """
        Read and send while the window has room.
        """
        while self.running and self._unacknowledged < self.window:
            try:
                message = self.logFile.nextMessage()
            except OSError as e:
                self.log.error("Cannot read {path}: {error}", path=self.logFile.path, error=errorText(e))
                break
            if message is None:
                break
            payload, key, offset = message
            entry = _Pending(key, offset, acknowledged=not payload)
            self._pending.append(entry)
            if payload:
                self._unacknowledged += 1
                self._send(entry, payload)
        self._advance()

    def _send(self, entry, payload):
        self._sending += 1
        d = self.producer.sendMessage(Message(self.topic, payload))
        d.addCallbacks(self._sent, self._failed, (entry, payload), None, (entry, payload))

    def _sent(self, result, entry, payload):
        if not result.success:
            return self._failed(result.errorMessage, entry, payload)
        self._done()
        if self._failing:
            self._failing = False
            self.log.info("Sending to {topic} works again", topic=self.topic)
        entry.acknowledged = True
        self._unacknowledged -= 1
        self._advance()
        if self.running:
            self.poll()

    def _failed(self, why, entry, payload):
        self._done()
        if not isinstance(why, str):
            why = why.getErrorMessage()
        if not self._failing:
            # Once per outage, not once per message of the window.
            self._failing = True
            self.log.warn("Sending to {topic} failed ({why}); retrying every {delay} s",
                          topic=self.topic, why=why, delay=self.retryDelay)
        if self.running:
            self.reactor.callLater(self.retryDelay, self._retry, entry, payload)

    def _retry(self, entry, payload):
        if self.running:
            self._send(entry, payload)

    def _done(self):
        self._sending -= 1
        if self._sending == 0 and self._drained is not None:
            self._drained, drained = None, self._drained
            drained.callback(None)

    def _advance(self):
        last = None
        while self._pending and self._pending[0].acknowledged:
            last = self._pending.popleft()
        if last is not None:
            self.position = (last.key, last.offset)
            self.state.save(*self.position)

    @defer.inlineCallbacks
    def stopService(self):
        """
        Stop reading, wait for the answers to the messages in flight (not
        sending failed ones again) and save the position.
        """
        service.Service.stopService(self)
        if self._loop.running:
            self._loop.stop()
        if self._sending:
            self._drained = defer.Deferred()
            yield self._drained
        self.state.save(*self.position)
        yield self.state.whenSaved()
        self.logFile.close()


class Options(Verbosity, usage.Options):
    synopsis = "--topic TOPIC (--zookeeper HOST:PORT | --broker URL) [options] FILE"
    optFlags = [
        ["from-beginning", None, "without a saved position, start at the beginning of the "
                                 "file (default: at its end)"],
    ]
    optParameters = [
        ["topic", "t", None, "the topic to publish to (required)"],
        ["zookeeper", "z", None, "find the brokers in this ZooKeeper (host:port[,...])"],
        ["zk-root", None, "/meta", "MetaQ's root znode"],
        ["broker", "b", None, "send to this broker directly (meta://host:port)"],
        ["partitions", None, 1, "with --broker: the topic's number of partitions", int],
        ["state", "s", None, "the position file (default: FILE.metaq-tail.TOPIC)"],
        ["delimiter", "d", "\\n", "the record separator (\\n, \\r\\n, \\0 or any text)"],
        ["lines", "n", 1, "put up to N records in one message", int],
        ["window", "w", 100, "messages sent and not yet acknowledged at most", int],
        ["max-message-size", None, 1024 * 1024, "longer records are split", int],
        ["interval", None, 0.2, "seconds between polls of the file", float],
        ["timeout", None, 10.0, "seconds to wait for ZooKeeper and the brokers at start", float],
    ]

    def parseArgs(self, path=None):
        self["file"] = path and os.path.abspath(path)

    def postOptions(self):
        inheritShared(self)
        if not self["file"]:
            raise usage.UsageError("the FILE to follow is missing")
        if not self["topic"]:
            raise usage.UsageError("--topic is required")
        checkBrokerSource(self)
        for name in ("partitions", "lines", "window", "max-message-size"):
            if self[name] < 1:
                raise usage.UsageError("--%s must be at least 1" % (name,))
        if not self["interval"] > 0:
            raise usage.UsageError("--interval must be positive")
        self["delimiter"] = self["delimiter"].encode("utf-8").decode("unicode_escape").encode(
            "latin-1")
        if not self["delimiter"]:
            raise usage.UsageError("--delimiter must not be empty")
        if self["state"] is None:
            self["state"] = "%s.metaq-tail.%s" % (self["file"], self["topic"])


def startOffset(logFile, saved, fromBeginning):
    """
    Where to start reading: the saved offset if it is about this file,
    the start of a file that replaced the saved one, else the end (or the
    start with C{--from-beginning}).
    """
    key = fileKey(os.stat(logFile.path))
    if saved is None:
        return 0 if fromBeginning else None
    savedKey, offset = saved
    if savedKey != key:
        return 0
    return offset


async def startProducer(reactor, options, createProducer=None, **fields):
    """
    A session factory and a producer of the topic with its brokers
    connected.

    @param createProducer: makes the producer from the started session
        factory (a plain producer by default).
    @param fields: further L{MetaClientConfig} fields.

    @raise ToolError: ZooKeeper or a broker cannot be reached in time, or
        no broker carries the topic.
    """
    timeout = options["timeout"]
    topic = options["topic"]
    config = MetaClientConfig(
        zkConnect=options["zookeeper"], zkRoot=options["zk-root"],
        zkConnectionTimeoutMs=int(timeout * 1000), serverUrl=options["broker"],
        partitions={topic: options["partitions"]} if options["broker"] else {}, **fields)
    session = MetaMessageSessionFactory(config, reactor)
    try:
        try:
            await session.start()
        except Exception as e:
            raise ToolError("cannot connect to ZooKeeper at %s: %s"
                            % (options["zookeeper"], e or type(e).__name__))
        producer = (createProducer or MetaMessageSessionFactory.createProducer)(session)
        await producer.publish(topic)
        urls = session.discovery.brokerUrls(topic)
        if not urls:
            raise ToolError("no broker publishes the topic %r (under %s in ZooKeeper)"
                            % (topic, options["zk-root"]))
        for url in sorted(urls):
            try:
                await session.connections.get(url).whenConnected(timeout)
            except MetaClientError as e:
                raise ToolError("cannot connect to the broker %s: %s" % (url, e))
    except BaseException:
        await session.close()
        raise
    return session, producer


async def main(reactor, options):
    logFile = LogFile(options["file"], options["delimiter"], options["lines"],
                      options["max-message-size"])
    state = StateFile(options["state"], reactor)
    saved = state.load()
    try:
        logFile.open(startOffset(logFile, saved, options["from-beginning"]))
    except OSError as e:
        raise ToolError("cannot read %s: %s" % (options["file"], e.strerror or e))
    session, producer = await startProducer(reactor, options)
    tailer = Tailer(logFile, state, producer, options["topic"], reactor,
                    window=options["window"], interval=options["interval"])

    async def shutDown():
        await tailer.stopService()
        await session.close()

    reactor.addSystemEventTrigger(
        "before", "shutdown", lambda: defer.ensureDeferred(shutDown()))
    Tailer.log.info("Following {file} from offset {offset} into {topic}",
                    file=options["file"], offset=logFile.offset, topic=options["topic"])
    tailer.startService()
    await defer.Deferred()


def run(argv=None):
    runAlias("metaq-tail", "tail", Options(), main, argv, defaultLevel=LogLevel.info)


if __name__ == "__main__":
    run()
