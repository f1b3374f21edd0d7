"""
Replay the client side of the captured Java exchanges (L{tests.captures})
against a running broker and compare its replies with the Java broker's.

For each scenario, every recorded connection is opened when the capture
opened it, the client's bytes are written in the recorded chunks, and each
reply frame the Java broker sent is awaited on the same connection (matched
by opaque, so pipelined replies may come in any order) and compared.  What
may differ, and nothing else:

  - message ids (the 8 bytes of each stored message's id inside a C{value}
    body, and the first token of a put's C{result 200}): they hold a clock;
  - in the C{stats} summary, the values that describe the process (pid,
    uptime, version, connection and thread counts, counters), which must
    only have the same shape, and the lines this broker adds after all of
    the Java broker's (its ZooKeeper state, replication); in
    C{stats realtime}, the measured numbers;
  - the order of the lines of C{stats topics} and C{stats offsets};
  - the port, which is the broker's own: expected texts naming the recorded
    port name the broker's;
  - C{stats config}, which must return the file the broker was started
    with (the test writes its own paths and ZooKeeper address into it).

A connection the Java broker closed without replying (a malformed request)
must be closed by the broker under test too, which may first answer with
one C{result 400}.

The replay is Twisted code on the test's reactor, so the broker may run in
the same process (as L{tests.protocol.test_conformance} does) or elsewhere.
"""

import collections
import re
import zlib
from dataclasses import dataclass

from twisted.internet import defer, endpoints, error, protocol
from twisted.internet.task import deferLater

from tests.captures import capturePath, readEvents

#: Seconds to wait for each reply (generous: the machine may be busy).
REPLY_TIMEOUT = 10.0
#: Seconds for the broker to close a connection the Java broker closed.
CLOSE_TIMEOUT = 5.0
#: Seconds to watch for unexpected replies on a connection the client closed.
QUIET_TIME = 0.3
#: Longest wait before writing on another connection than the one that got
#: the last reply: across connections only time orders the broker's work
#: (the Java broker appends a committed transaction after replying).
SETTLE = 0.1
#: Reply timeouts after which a scenario is abandoned.
MAX_TIMEOUTS = 3

#: Java's Integer.MAX_VALUE: the opaque of a C{stats}/C{version} line that has none.
NO_OPAQUE = 2147483647


@dataclass
class Frame:
    """
    One reply: C{result <code> <length> <opaque>} or C{value <length> <opaque>},
    and its body.
    """

    kind: str
    code: int | None
    opaque: int
    body: bytes

    def __str__(self):
        head = "result %s" % (self.code,) if self.kind == "result" else "value"
        return "%s %d %d %s" % (head, len(self.body), self.opaque, shown(self.body))


class Unparseable(Exception):
    """
    Bytes that do not start a reply frame.
    """


def nextFrame(buffer):
    """
    The first complete frame of C{buffer} and the bytes it took, or
    C{(None, 0)} when it is incomplete.

    @raise Unparseable: when the bytes cannot be a reply.
    """
    end = buffer.find(b"\r\n")
    if end < 0:
        if len(buffer) > 256:
            raise Unparseable("no header in %s" % (shown(buffer[:80]),))
        return None, 0
    tokens = bytes(buffer[:end]).split(b" ")
    try:
        if tokens[0] == b"result" and len(tokens) == 4:
            kind, code, length, opaque = "result", int(tokens[1]), int(tokens[2]), int(tokens[3])
        elif tokens[0] == b"value" and len(tokens) == 3:
            kind, code, length, opaque = "value", None, int(tokens[1]), int(tokens[2])
        else:
            raise ValueError()
    except ValueError:
        raise Unparseable("not a reply header: %s" % (shown(buffer[:end]),))
    if length < 0:
        raise Unparseable("negative length: %s" % (shown(buffer[:end]),))
    size = end + 2 + length
    if len(buffer) < size:
        return None, 0
    return Frame(kind, code, opaque, bytes(buffer[end + 2 : size])), size


def shown(data, limit=160):
    """
    C{data} escaped for a failure message, cut at C{limit} characters.
    """
    text = repr(bytes(data))[2:-1]
    return text if len(text) <= limit else text[:limit] + "...(%d bytes)" % (len(data),)


# The client's requests, to know what each reply answers.


@dataclass
class Request:
    kind: str
    tokens: list
    opaque: int | None


def readRequests(stream):
    """
    The requests of a recorded client stream, as far as it can be read
    (a malformed request ends it): only the verb, the tokens and the
    opaque, which is what the comparison needs.
    """
    requests, position = [], 0
    while True:
        end = stream.find(b"\r\n", position)
        if end < 0:
            return requests
        tokens = stream[position:end].decode("utf-8", "replace").split(" ")
        while tokens and tokens[-1] == "":
            tokens.pop()
        verb = tokens[0] if tokens else ""
        after = end + 2
        try:
            if verb in ("put", "sync"):
                after += int(tokens[3])
                opaque = int(tokens[-1])
            elif verb == "get":
                opaque = int(tokens[6])
            elif verb == "offset":
                opaque = int(tokens[5])
            elif verb in ("stats", "version"):
                last = 2 if verb == "stats" else 1
                opaque = int(tokens[last]) if len(tokens) > last else NO_OPAQUE
            elif verb == "transaction":
                opaque = int(tokens[-1])
            elif verb == "quit":
                opaque = None
            else:
                return requests
        except (ValueError, IndexError):
            return requests
        if after > len(stream):
            return requests
        requests.append(Request(verb, tokens, opaque))
        position = after


# Where the ids are in a value body.

_HEADER = 20  # length, checksum, id, flag


def messageSize(body, position):
    """
    The size of the complete, checksum-valid message at C{position} of
    C{body}, or 0.
    """
    if position + _HEADER > len(body):
        return 0
    length = int.from_bytes(body[position : position + 4], "big", signed=True)
    end = position + _HEADER + length
    if length < 0 or end > len(body):
        return 0
    checksum = int.from_bytes(body[position + 4 : position + 8], "big", signed=True)
    return end - position if zlib.crc32(body[position + _HEADER : end]) & 0x7FFFFFFF == checksum else 0


def messageStarts(body, position):
    """
    The start of every message from C{position} to the end of C{body} (the
    last may be cut short, as a C{get} with a small C{maxSize} cuts it), or
    L{None} when the bytes from C{position} are not a run of messages.
    """
    starts = []
    while position < len(body):
        size = messageSize(body, position)
        if size:
            starts.append(position)
            position += size
            continue
        length = int.from_bytes(body[position : position + 4], "big", signed=True) if len(body) - position >= 4 else 0
        if len(body) - position < _HEADER or position + _HEADER + length > len(body):
            starts.append(position)
            return starts
        return None
    return starts


class PartitionLayouts:
    """
    Where messages start in each partition, learned from the Java broker's
    replies as the scenarios go, so that a C{get} from an offset inside a
    message can still have the ids it shows masked.
    """

    def __init__(self):
        self._sizes = collections.defaultdict(dict)  # (topic, partition) -> {offset: size or None}

    def putAt(self, topic, partition, offset):
        if offset >= 0:
            self._sizes[(topic, partition)].setdefault(offset, None)

    def idRanges(self, topic, partition, offset, body):
        """
        The byte ranges of C{body}, the reply to a C{get} at C{offset},
        that hold message ids.
        """
        sizes = self._sizes[(topic, partition)]
        first, starts = 0, None
        if offset in sizes or messageSize(body, 0):
            starts = messageStarts(body, 0)
        if starts is None:
            for position in range(1, max(len(body) - _HEADER + 1, 1)):
                if messageSize(body, position):
                    starts = messageStarts(body, position)
                    if starts is not None:
                        first = position
                        break
        if starts is None:
            starts = messageStarts(body, 0) or [0]
        ranges = [(start + 8, min(start + 16, len(body))) for start in starts if start + 8 < len(body)]
        if first:
            # The body begins with the tail of a message that started
            # before the offset: mask what it shows of that id.
            for start, size in sizes.items():
                if size and start < offset < start + size:
                    low, high = start + 8 - offset, start + 16 - offset
                    if high > 0 and low < first:
                        ranges.append((max(low, 0), min(high, first)))
        for start in starts:
            size = messageSize(body, start)
            if size or offset + start not in sizes:
                sizes[offset + start] = size or None
        return ranges


def masked(data, ranges):
    data = bytearray(data)
    for low, high in ranges:
        data[low:high] = b"*" * len(data[low:high])
    return bytes(data)


# Comparing one reply.

_INTEGER = re.compile(r"-?\d+")
_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)?|invalid")
_EXACT_SUMMARY = {"broker_id", "slave", "topics", "total_messages"}
_SHAPED_SUMMARY = {"pid", "uptime", "version", "curr_connections", "threads", "get_miss", "put_failed",
                   "config_checksum"}


def _shape(value):
    if value is None or value == "":
        return "empty"
    return "integer" if _INTEGER.fullmatch(value) else "text"


def _maskRealtime(value):
    if not value.startswith("Count="):
        return value
    fields = []
    for field in value.split(","):
        key, equals, number = field.partition("=")
        fields.append(key + "=#" if equals and _NUMBER.fullmatch(number) else field)
    return ",".join(fields)


class Comparison:
    """
    The rules by which a reply of the broker under test matches the Java
    broker's, for one replay.

    @ivar recordedPort: the port the Java broker listened on.
    @ivar port: the port of the broker under test.
    @ivar configFile: the bytes C{stats config} must return.
    """

    def __init__(self, recordedPort, port, configFile):
        self.recordedPort = recordedPort
        self.port = port
        self.configFile = configFile
        self.layouts = PartitionLayouts()

    def expectedText(self, body):
        return body.replace(b"127.0.0.1:%d" % (self.recordedPort,), b"127.0.0.1:%d" % (self.port,))

    def differences(self, request, expected, got):
        where = "[%s] " % (" ".join(request.tokens)[:80] if request else "?",)
        if (expected.kind, expected.code) != (got.kind, got.code):
            return [where + "expected %s, got %s" % (expected, got)]
        kind = request.kind if request else None
        if expected.kind == "value":
            ranges = []
            if kind == "get":
                tokens = request.tokens
                ranges = self.layouts.idRanges(tokens[1], int(tokens[3]), int(tokens[4]), expected.body)
            want, have = masked(expected.body, ranges), masked(got.body, ranges)
            return [] if want == have else [where + "value body (ids as *): expected %s, got %s" % (
                shown(want), shown(have))]
        if kind in ("put", "sync") and expected.code == 200:
            return self._putReply(where, request, expected.body, got.body)
        if kind == "version" and expected.code == 200:
            return [] if got.body else [where + "empty version"]
        if kind == "stats" and expected.code == 200:
            return [where + d for d in self._stats(request, expected.body, got.body)]
        want = self.expectedText(expected.body)
        return [] if want == got.body else [where + "result %d body: expected %s, got %s" % (
            expected.code, shown(want), shown(got.body))]

    def _putReply(self, where, request, expected, got):
        want, have = expected.split(b" "), got.split(b" ")
        if len(have) != 3 or not _INTEGER.fullmatch(have[0].decode("latin-1")):
            return [where + "a put reply is 'id partition offset', got %s" % (shown(got),)]
        if len(want) == 3 and want[1:] != have[1:]:
            return [where + "partition and offset: expected %s, got %s" % (
                shown(b" ".join(want[1:])), shown(b" ".join(have[1:])))]
        if len(want) == 3 and request.kind == "put":
            self.layouts.putAt(request.tokens[1], int(want[1]), int(want[2]))
        return []

    def _stats(self, request, expected, got):
        item = request.tokens[1] if len(request.tokens) > 1 and request.tokens[1] else None
        if item == "config":
            return [] if got == self.configFile else ["stats config: expected the broker's file, got %s" % (
                shown(got),)]
        if item in ("help", "reset"):
            return [] if got == expected else ["stats %s: expected %s, got %s" % (item, shown(expected), shown(got))]
        text = got.decode("utf-8", "replace")
        if not (text.startswith("STATS\r\n") and text.endswith("END\r\n")):
            return ["stats must be STATS ... END, got %s" % (shown(got),)]
        wanted = expected.decode("utf-8", "replace")
        if not wanted.endswith("\r\n"):
            return [] if got == expected else ["stats: expected %s, got %s" % (shown(expected), shown(got))]
        want, have = wanted[:-2].split("\r\n")[1:-1], text[:-2].split("\r\n")[1:-1]
        if item in ("topics", "offsets"):
            missing = sorted(set(want) - set(have))
            extra = sorted(set(have) - set(want))
            return [] if sorted(want) == sorted(have) else ["stats %s lines (any order): missing %s, extra %s" % (
                item, missing, extra)]
        keys = [line.split(" ", 1)[0] for line in want]
        haveKeys = [line.split(" ", 1)[0] for line in have]
        if item is None:
            # The summary may go on after the Java broker's lines: this
            # broker's own items (ZooKeeper state, replication) come last.
            haveKeys = haveKeys[: len(keys)]
        if keys != haveKeys:
            return ["stats %s keys: expected %s, got %s" % (item or "", keys, [
                line.split(" ", 1)[0] for line in have])]
        found = []
        for wantLine, haveLine in zip(want, have):
            key, _, wantValue = wantLine.partition(" ")
            haveValue = haveLine.partition(" ")[2]
            if item is None and key == "port":
                if haveValue != str(self.port):
                    found.append("stats port: expected %d, got %r" % (self.port, haveValue))
            elif item is None and key not in _EXACT_SUMMARY and (
                    key in _SHAPED_SUMMARY or key.startswith(("cmd_", "tx_"))):
                if _shape(wantValue) != _shape(haveValue):
                    found.append("stats %s: expected a %s value, got %r" % (key, _shape(wantValue), haveValue))
            elif "realtime_" in key:
                if _maskRealtime(wantValue) != _maskRealtime(haveValue):
                    found.append("stats %s: expected %r, got %r (numbers aside)" % (key, wantValue, haveValue))
            elif wantLine != haveLine:
                found.append("stats %s line: expected %r, got %r" % (item or "", wantLine, haveLine))
        return found


# The replay.


class _ReplayProtocol(protocol.Protocol):
    """
    One replayed connection: it collects the broker's frames until asked
    for one by opaque.
    """

    def __init__(self, reactor):
        self._reactor = reactor
        self._buffer = bytearray()
        self._frames = []
        self._changed = defer.Deferred()
        self.lost = False
        self.broken = None
        self.finished = False

    def connectionMade(self):
        self.transport.setTcpNoDelay(True)

    def dataReceived(self, data):
        self._buffer += data
        while self.broken is None:
            try:
                frame, size = nextFrame(self._buffer)
            except Unparseable as e:
                self.broken = str(e)
                break
            if frame is None:
                break
            del self._buffer[:size]
            self._frames.append(frame)
        self._wake()

    def connectionLost(self, reason):
        self.lost = True
        self._wake()

    def _wake(self):
        changed, self._changed = self._changed, defer.Deferred()
        if not changed.called:
            changed.callback(None)

    async def _changes(self, deadline):
        left = deadline - self._reactor.seconds()
        if left <= 0:
            return False
        waiting = self._changed
        timer = self._reactor.callLater(left, lambda: waiting.called or waiting.callback(None))
        await waiting
        if timer.active():
            timer.cancel()
        return self._reactor.seconds() < deadline

    async def frame(self, opaque, timeout):
        """
        The broker's next frame with C{opaque} (frames with other opaques
        are kept for later), or a text saying why there is none.
        """
        deadline = self._reactor.seconds() + timeout
        while True:
            for i, frame in enumerate(self._frames):
                if frame.opaque == opaque:
                    return self._frames.pop(i), None
            if self.broken:
                return None, "unparseable reply: " + self.broken
            if self.lost:
                return None, "the broker closed the connection"
            if not await self._changes(deadline):
                return None, "no reply within %g s" % (timeout,)

    async def rest(self, timeout, untilClosed):
        """
        The frames not asked for so far and those that arrive within
        C{timeout}; if C{untilClosed}, stop waiting once the broker closes
        the connection.
        """
        deadline = self._reactor.seconds() + timeout
        while not (untilClosed and (self.lost or self.broken)) and await self._changes(deadline):
            pass
        frames, self._frames = self._frames, []
        return frames


def plan(events):
    """
    The recorded events with each S->C chunk turned into the frames it
    completes, each paired with the request it answers.
    """
    streams = collections.defaultdict(bytes)
    for event in events:
        if event.kind == "C->S":
            streams[event.connection] += event.data
    pending = {}
    for connection, stream in streams.items():
        byOpaque = pending[connection] = collections.defaultdict(collections.deque)
        for request in readRequests(stream):
            if request.opaque is not None:
                byOpaque[request.opaque].append(request)
    buffers = collections.defaultdict(bytearray)
    clientClosed = set()
    steps = []
    for event in events:
        if event.kind == "S->C":
            buffer = buffers[event.connection]
            buffer += event.data
            frames = []
            while True:
                try:
                    frame, size = nextFrame(buffer)
                except Unparseable:
                    break
                if frame is None:
                    break
                del buffer[:size]
                waiting = pending.get(event.connection, {}).get(frame.opaque)
                frames.append((frame, waiting.popleft() if waiting else None))
            steps.append((event, frames))
        elif event.kind == "client-close":
            clientClosed.add(event.connection)
            steps.append((event, None))
        elif event.kind == "broker-close":
            steps.append((event, event.connection not in clientClosed))
        else:
            steps.append((event, None))
    return steps


async def replayScenario(reactor, scenario, port, comparison):
    """
    Replay one scenario of the manifest against 127.0.0.1:C{port}.

    @return: the differences found, as texts (none: it passed).
    """
    found = []
    connections = {}
    timeouts = 0
    lastReply = None  # (connection, recorded time, reactor time)

    async def finish(number, client, brokerFirst):
        if client.finished:
            return
        client.finished = True
        if brokerFirst:
            frames = await client.rest(CLOSE_TIMEOUT, untilClosed=True)
            allowed = 1
            for frame in frames:
                if allowed and frame.kind == "result" and frame.code == 400:
                    allowed -= 1
                    continue
                found.append("#%d the Java broker closed without replying; got %s" % (number, frame))
            if client.broken:
                found.append("#%d unparseable bytes before closing: %s" % (number, client.broken))
            elif not client.lost:
                found.append("#%d the Java broker closed this connection; this one did not within %g s" % (
                    number, CLOSE_TIMEOUT))
        else:
            for frame in await client.rest(0 if client.lost else QUIET_TIME, untilClosed=False):
                found.append("#%d unexpected reply %s" % (number, frame))
            if client.broken:
                found.append("#%d unparseable bytes: %s" % (number, client.broken))
        client.transport.loseConnection()

    events = readEvents(capturePath(scenario["file"]))
    try:
        for event, detail in plan(events):
            if timeouts >= MAX_TIMEOUTS:
                found.append("abandoned after %d replies that did not come" % (timeouts,))
                break
            number = event.connection
            client = connections.get(number)
            if event.kind == "open":
                endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
                try:
                    connections[number] = await endpoints.connectProtocol(endpoint, _ReplayProtocol(reactor))
                except error.ConnectError as e:
                    found.append("#%d cannot connect to 127.0.0.1:%d: %s" % (number, port, e))
                    break
            elif event.kind == "C->S":
                if client is None or client.lost:
                    continue
                if lastReply is not None and lastReply[0] != number:
                    wait = min(event.time - lastReply[1], SETTLE) - (reactor.seconds() - lastReply[2])
                    if wait > 0:
                        await deferLater(reactor, wait, lambda: None)
                    lastReply = None
                client.transport.write(event.data)
                # Two reactor turns, with a poll of the sockets between them,
                # so that each recorded chunk leaves in a send of its own,
                # as the Java client's did.
                await deferLater(reactor, 0, lambda: None)
                await deferLater(reactor, 0, lambda: None)
            elif event.kind == "S->C":
                for expected, request in detail:
                    if client is None:
                        found.append("#%d expected %s on a connection never opened" % (number, expected))
                        continue
                    got, why = await client.frame(expected.opaque, REPLY_TIMEOUT)
                    label = " ".join(request.tokens)[:80] if request else "?"
                    if got is None:
                        found.append("#%d [%s] expected %s: %s" % (number, label, expected, why))
                        timeouts += why.startswith("no reply")
                        continue
                    lastReply = (number, event.time, reactor.seconds())
                    found.extend("#%d %s" % (number, d) for d in comparison.differences(request, expected, got))
            elif event.kind == "client-close":
                if client is not None and not client.lost:
                    client.transport.loseWriteConnection()
            elif event.kind == "broker-close":
                if client is not None:
                    await finish(number, client, detail)
            elif event.kind == "end":
                break
    finally:
        for number, client in connections.items():
            await finish(number, client, False)
    return found
