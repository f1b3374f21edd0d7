"""
The broker's side of the MetaQ protocol.

L{BrokerProtocol} only frames: it hands each decoded command to its factory
and writes back what comes out, keeping a slow reader from making the broker
buffer without bound. L{BrokerFactory} holds what the connections share and
routes each command to a processor: L{BrokerProcessor} for the plain broker
commands (docs/protocol.md, Java C{BrokerCommandProcessor}), an
L{ITransactionProcessor} for transactions and an optional L{ISyncProcessor}
for replication.
"""

import errno
import os
from collections import deque

from twisted.internet import defer, interfaces, protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.reflect import namedAny
from zope.interface import implementer

from metamorphosis import METAQ_VERSION
from metamorphosis.broker.access import AccessGate, AccessRules, principalOf
from metamorphosis.broker.interfaces import (
    IMessageFilter,
    ISession,
    ITransactionProcessor,
)
from metamorphosis.broker.redaction import redactSecrets
from metamorphosis.broker.store.bursts import acknowledging, batchedWrites
from metamorphosis.broker.store.errors import (
    DamagedRecords,
    OffsetBeforeStart,
    PartitionReadOnly,
    SegmentLost,
)
from metamorphosis.broker.tcpdirect import awaitWritable, directSocket, isIdle, writeNow
from metamorphosis.logfields import errorText, hostPort
from metamorphosis.protocol import records
from metamorphosis.protocol.commands import (
    GetCommand,
    OffsetCommand,
    PutBatch,
    PutCommand,
    QuitCommand,
    ResultCommand,
    StatsCommand,
    SyncBatch,
    SyncCommand,
    TransactionCommand,
    ValueCommand,
    VersionCommand,
    newResult,
    valueHeader,
)
from metamorphosis.protocol.framing import MetaProtocol
from metamorphosis.protocol.status import (
    BAD_REQUEST,
    FORBIDDEN,
    INTERNAL_ERROR,
    MOVED,
    NOT_FOUND,
    OK,
    SERVICE_UNAVAILABLE,
)
from metamorphosis.protocol.topics import IllegalTopicName, checkTopic
from metamorphosis.ratelog import RateLimitedLog

#: The Java broker closes connections without I/O
#: for this long.
IDLE_TIMEOUT = 300

#: The largest piece of a file read into memory at once while streaming a
#: C{get} reply.
CHUNK_SIZE = 256 * 1024

#: Java C{Long.MAX_VALUE}, the offset that always gets a 301.
LONG_MAX = 2**63 - 1


#: gecko's answer to a request no processor is registered for
#: (C{GeckoHandler.responseNoProcessor}).
NO_PROCESSOR_TEXT = "未注册请求处理器，请求处理器类为"
SYNC_COMMAND_CLASS = "com.taobao.metamorphosis.network.SyncCommand"


#: Errors of a full file system: refused writes, not broker faults.
DISK_FULL_ERRNOS = frozenset([errno.ENOSPC, errno.EDQUOT])


#: What L{BrokerFactory.dispatch} returns when it will call the C{replied}
#: it was given with the reply instead of returning it.
REPLY_LATER = object()


#: What a put or a sync whose body fails its checksum is told (Java's text).
CHECKSUM_FAILURE = "Checksum failure,message may be corrupted when transfering on networking."


def _nothing():
    pass


#: A stored record's reply (C{result 200}) as a format of its body's
#: length, its opaque and its body.
_STORED_REPLY = b"result %d %%d %%d\r\n%%s" % (OK,)


def storedReplies(replies, partition, offset):
    """
    The encoded replies to records stored one after the other from
    C{offset} in C{partition}, each C{(msgId, opaque, record size)} of
    C{replies} in order: its id, the partition and its own offset, as a
    put or a sync alone is answered.
    """
    encoded = []
    for msgId, opaque, size in replies:
        body = b"%d %d %d" % (msgId, partition, offset)
        # newResult(OK, body, opaque).encode(), without the object.
        encoded.append(_STORED_REPLY % (len(body), opaque, body))
        offset += size
    return b"".join(encoded)


def replyOrDeferred(handleThen, command, session):
    """
    Call C{handleThen(command, session, replied)} (L{BrokerProcessor.putThen},
    a C{syncThen}) for a caller that takes a reply or a Deferred of one
    (C{processPut}, C{processSync}): its reply, or a Deferred firing with
    the one it passes to C{replied} later.
    """
    d = defer.Deferred()
    reply = handleThen(command, session, d.callback)
    return d if reply is REPLY_LATER else reply


def putThenOf(processor):
    """
    C{processor.putThen} when the processor's class defines one (a put
    answered through a callable, without a Deferred: L{BrokerProcessor.putThen}),
    else L{None}.  Looked up on the class: a wrapper that passes other
    requests on through C{__getattr__} must not have its puts taken past
    it to the processor it wraps.
    """
    if getattr(type(processor), "putThen", None) is None:
        return None
    return processor.putThen


def putBatchThenOf(processor):
    """
    C{processor.putBatchThen} when the processor's class defines one (the
    puts of a L{PutBatch} stored and answered together:
    L{BrokerProcessor.putBatchThen}), else L{None}: its connections then
    hand it the puts of a batch one by one.  Looked up on the class, as
    L{putThenOf} does; a wrapper whose class has one sets its own to
    L{None} when what it wraps has none (L{metamorphosis.ha.failover.FencedProcessor}).
    """
    if getattr(type(processor), "putBatchThen", None) is None:
        return None
    return processor.putBatchThen


def describeWriteError(error):
    """
    The text telling a client why a write failed; a full disk says so in
    words, since that is what the operator must act on.
    """
    if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
        return f"the broker's disk is full ({error.strerror})"
    if isinstance(error, OSError) and error.errno in (errno.EMFILE, errno.ENFILE):
        return (f"the broker has no file descriptor left ({error.strerror}); "
                "existing partitions are still served")
    return str(error)


def result(code, text, opaque):
    """
    A C{result} reply with a text body.
    """
    return ResultCommand(code, text.encode("utf-8"), opaque)


def _noSyncProcessor(command):
    """
    The reply to a C{sync} sent to a broker that is not a sync slave.
    """
    return result(SERVICE_UNAVAILABLE, NO_PROCESSOR_TEXT + SYNC_COMMAND_CLASS, command.opaque)


class Replies:
    """
    The replies to a L{SyncBatch} or a L{PutBatch}, already encoded one
    after the other: one reply for the connection to send, in one write.
    """

    __slots__ = ("encoded",)

    def __init__(self, encoded):
        self.encoded = encoded

    def encode(self):
        return self.encoded


def storeByPartition(commands, partitionBatch, replied):
    """
    What the bulk paths of puts (L{BrokerProcessor.putBatchThen}) and of a
    sync slave's syncs share: C{commands} grouped by partition, each group
    a C{partitionBatch(topic, partition)} that takes its commands (C{add}),
    counts them (C{count}), holds the encoded refusals (C{encodedRefusals})
    and the C{replies} of the rest, and stores those (C{append}: one append
    of their records, L{appendRecords}) and tells its C{answer} its
    encoded replies; the replies, refusals first, go to C{replied} in one
    L{Replies} once every partition has stored (or failed) its part.

    @return: L{REPLY_LATER}, or the L{Replies} when every command is refused.
    """
    batches = {}
    for command in commands:
        key = (command.topic, command.partition)
        batch = batches.get(key)
        if batch is None:
            batch = batches[key] = partitionBatch(command.topic, command.partition)
        batch.add(command)
    refused = []
    waiting = 0
    for batch in batches.values():
        batch.count()
        refused.extend(batch.encodedRefusals())
        if batch.replies:
            waiting += 1
    if not waiting:
        return Replies(b"".join(refused))
    answer = JoinedReplies(replied, refused, waiting)
    for batch in batches.values():
        if batch.replies:
            batch.answer = answer
            batch.append()
    return REPLY_LATER


def appendRecords(batch):
    """
    Append the C{records} of C{batch} (a partition's part of
    L{storeByPartition}) to its C{store} as one append, one record for each
    of its C{replies}, to its C{stored} or C{failed}.
    """
    batch.store.appendRecordsThen(b"".join(batch.records), len(batch.replies), batch.stored, batch.failed)


class JoinedReplies:
    """
    The replies to one batch (a L{SyncBatch}, a L{PutBatch}): its
    refusals, then each partition's encoded replies as that partition
    stores (or fails) its records; passed to C{replied} in one L{Replies}
    once the last of C{waiting} partitions is done.
    """

    __slots__ = ("replied", "encoded", "waiting")

    def __init__(self, replied, refused, waiting):
        self.replied = replied
        self.encoded = refused
        self.waiting = waiting

    def add(self, encoded):
        self.encoded.append(encoded)
        self.waiting -= 1
        if not self.waiting:
            self.replied(Replies(b"".join(self.encoded)))


class FileRegion:
    """
    A reply whose body is a region of an open file (a C{get} slice): sent
    with C{sendfile} on plain TCP connections, else in chunks read from the
    file descriptor, so the whole region never sits in memory.

    @ivar source: the object owning the descriptor, kept alive while the
        region is sent.
    """

    def __init__(self, header, fileno, position, length, source=None):
        self.header = header
        self.fileno = fileno
        self.position = position
        self.remaining = length
        self.source = source

    def sendTo(self, sock):
        """
        Send as much as C{sock} takes now: the header, then the file region
        with C{sendfile} (no copy through Python).

        @return: whether everything is sent.
        @raise BlockingIOError: the socket is full.
        @raise OSError: the socket or the file failed.
        """
        while self.header is not None:
            sent = sock.send(self.header)
            self.header = self.header[sent:] or None
        while self.remaining > 0:
            sent = os.sendfile(sock.fileno(), self.fileno, self.position, self.remaining)
            if sent == 0:
                raise OSError(f"file ended {self.remaining} bytes early")
            self.position += sent
            self.remaining -= sent
        return True

    def nextChunk(self):
        """
        The next piece of the region; L{None} when it is all sent.
        """
        if self.header is not None:
            header, self.header = self.header, None
            return header
        if self.remaining <= 0:
            return None
        chunk = os.pread(self.fileno, min(CHUNK_SIZE, self.remaining), self.position)
        if not chunk:
            raise OSError(f"file ended {self.remaining} bytes early")
        self.position += len(chunk)
        self.remaining -= len(chunk)
        return chunk


@implementer(ISession)
class Session:
    """
    The state of one connection that processors may keep (Java
    C{SessionContext}).

    @ivar closed: whether the connection is gone.
    """

    def __init__(self, peer, transport=None, closeWhenSilent=None):
        """
        @param closeWhenSilent: what L{closeWhenSilent} asks of the
            connection.
        """
        self.peer = peer
        self.context = {}
        self.closed = False
        self._transport = transport
        self._principal = None
        self._closeWhenSilent = closeWhenSilent

    def closeWhenSilent(self, seconds):
        """
        Close this connection once nothing has been read from it for
        C{seconds} (L{None}: after the broker's idle timeout, as at first):
        a sync slave's link from a master that heartbeats it (docs/ha.md).
        """
        self._closeWhenSilent(seconds)

    @property
    def principal(self):
        """
        Who is connected (L{metamorphosis.broker.access.Principal}), known
        once the TLS handshake is over, so read at the first command.
        """
        if self._principal is None:
            self._principal = principalOf(self.peer, self._transport)
            self._transport = None
        return self._principal


@implementer(interfaces.IPushProducer)
class BrokerProtocol(MetaProtocol, TimeoutMixin):
    """
    One client connection.

    Flow control: the protocol is a streaming producer registered with its
    own transport. When the transport's buffer fills, it stops reading from
    the socket, queues the commands already decoded and holds back replies;
    when the buffer drains it sends the held replies and only then handles
    the queued commands. So a client that stops reading costs the broker at
    most one reply in the transport buffer, one file chunk and what one read
    decoded.
    """

    log = Logger()

    #: The whole syncs of one read come as one command (a sync slave's
    #: bulk path: L{BrokerFactory.dispatch}), and so do its whole plain
    #: puts (L{BrokerProcessor.putBatchThen}).
    syncBatches = True
    putBatches = True

    def __init__(self):
        self._paused = False
        # Replies are held back (and then sent in one write) while set.
        self._corked = False
        self._commands = deque()
        self._output = deque()
        self._inFlight = 0
        self._closing = False
        self._connected = False
        # Memory and time taken by the request being received.
        self._unfinished = 0
        self._deadline = None
        self._completed = False
        # Closing after the client closes (see drain).
        self._linger = False
        self._halfClosed = False
        self._readLost = False
        # The limit of silence a processor set (Session.closeWhenSilent).
        self._silence = None

    def connectionMade(self):
        self._connected = True
        # Read before the first byte, which makes the parser.
        self.maxBodySize = self.factory.config.maxRequestBodySize
        self.maxLineLength = self.factory.config.maxRequestLineLength
        # sendfile needs the socket itself: plain TCP, not TLS or a test
        # transport.
        self._sendfile = directSocket(self.transport) is not None
        if self._sendfile:
            # As gecko does: a reply's last small segment must not wait for
            # the client's delayed ACK of the previous one.
            self.transport.setTcpNoDelay(True)
        self.session = Session(self.transport.getPeer(), self.transport, self._closeWhenSilent)
        self.transport.registerProducer(self, True)
        self.setTimeout(self.factory.idleTimeout)
        self.factory.connectionOpened(self)

    def connectionLost(self, reason=protocol.connectionDone):
        MetaProtocol.connectionLost(self, reason)
        self._connected = False
        self.setTimeout(None)
        self._setUnfinished(0)
        self._stopDeadline()
        self._commands.clear()
        self._output.clear()
        self.factory.connectionClosed(self)

    def dataReceived(self, data):
        if not self._failed:
            # A client whose request was refused cannot keep the connection
            # open by trickling bytes.
            self.resetTimeout()
        self._completed = False
        # The disk waits while this read's puts are parsed and written.
        self.factory.keepDiskAwake()
        # The replies to all the requests of one read that are answered at
        # once go out in one write, after the read is processed.
        corked, self._corked = self._corked, True
        try:
            with batchedWrites:
                MetaProtocol.dataReceived(self, data)
        finally:
            if not corked:
                self._uncork()
        if self._failed or self._parser is None:
            self._setUnfinished(0)
            self._stopDeadline()
            return
        self._setUnfinished(self._parser.bufferedBytes)
        if not self._unfinished:
            self._stopDeadline()
        elif self._completed or self._deadline is None:
            # A request began in this read: its clock starts now.
            self._startDeadline()
        factory = self.factory
        if self._unfinished and factory.unfinishedBytes > factory.maxUnfinishedBytes:
            self._abandonRequest(
                SERVICE_UNAVAILABLE, "overloaded",
                f"The broker holds more than {factory.maxUnfinishedBytes} bytes of unfinished requests "
                "(maxUnfinishedRequestBytes); try again later")

    # Limits of requests being received

    def _setUnfinished(self, count):
        self.factory.unfinishedBytes += count - self._unfinished
        self._unfinished = count

    def _startDeadline(self):
        self._stopDeadline()
        seconds = self.factory.requestDeadline
        if seconds > 0:
            self._deadline = self.callLater(seconds, self._requestTooSlow)

    def _stopDeadline(self):
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _requestTooSlow(self):
        self._deadline = None
        self._abandonRequest(
            BAD_REQUEST, "too-slow",
            f"Request not complete within {self.factory.requestDeadline} s "
            "(maxRequestSeconds)")

    def _abandonRequest(self, code, kind, text):
        """
        Drop the request being received (its bytes are freed at once),
        answer why, and close: the rest of its body would be read as
        commands otherwise.
        """
        error = self._parser.abandon(text)
        self._failed = True
        # The client is likely still sending: close as in drain, so that
        # the reply is not lost to a reset.
        self._linger = True
        self._setUnfinished(0)
        self._stopDeadline()
        self.factory.refusals.warn(
            "request-" + kind, "Closing {peer}: {error}",
            peer=hostPort(self.session.peer), error=text)
        self._commands.clear()
        self.sendReply(result(code, text, error.opaque))
        self._closeWhenDone()

    def _closeWhenSilent(self, seconds):
        # The idle timer counts from the last read: with a shorter period
        # it is the silence limit.
        if self._connected:
            self._silence = seconds
            self.setTimeout(self.factory.idleTimeout if seconds is None else seconds)

    def timeoutConnection(self):
        if self._silence is None:
            self.factory.refusals.info("idle", "Closing {peer}: no I/O for {timeout} s",
                                       peer=hostPort(self.session.peer), timeout=self.timeOut)
        else:
            self.factory.refusals.warn("silent", "Closing {peer}: nothing read for {timeout} s",
                                       peer=hostPort(self.session.peer), timeout=self.timeOut)
        self.transport.abortConnection()

    # Commands

    def commandReceived(self, command):
        self._completed = True
        if self._closing:
            return
        if self._paused or self._commands or (self._output and not self._corked):
            self._commands.append(command)
            return
        self._handle(command)

    def _handle(self, command):
        if isinstance(command, QuitCommand):
            self._commands.clear()
            self._closeWhenDone()
            return
        if isinstance(command, PutBatch) and self.factory.putBatchThen is None:
            # A processor without a bulk path for puts (or a fence around
            # one) takes them one by one.
            for put in command.puts:
                self._handle(put)
            return
        # Counted before dispatching: a put's reply may come before
        # dispatch returns.
        self._inFlight += 1
        try:
            reply = self.factory.dispatch(command, self.session, self._replied)
        except Exception:
            self._inFlight -= 1
            self.log.failure("Processing {command} failed", command=repr(command))
            self.transport.loseConnection()
            return
        if reply is REPLY_LATER:
            return
        if isinstance(reply, defer.Deferred):
            reply.addCallbacks(self._replied, self._replyFailed, errbackArgs=(command,))
        else:
            self._inFlight -= 1
            self.sendReply(reply)

    def _replied(self, reply):
        self._inFlight -= 1
        if self._sendfile and not self._corked and self._connected:
            # Stored puts are acknowledged in bursts (every put one fsync
            # covers): their replies leave together, in one send, once the
            # burst is over: at its end when a store fires it, else at the
            # next reactor turn.
            self._corked = True
            if acknowledging.depth:
                acknowledging.later(self._uncork)
            else:
                self.factory.uncorkSoon(self)
        self.sendReply(reply)
        self._maybeClose()

    def _replyFailed(self, failure, command):
        self._inFlight -= 1
        self.log.failure("Processing {command} failed", failure, command=repr(command))
        if self._connected:
            self.transport.abortConnection()

    def protocolErrorReceived(self, error):
        """
        Malformed input: explain it in one C{result 400} (the replay allows
        that one frame; the Java broker closes silently), log it, close.
        """
        self.factory.refusals.warn(
            "malformed-request", "Closing {peer}: malformed request: {error}",
            peer=hostPort(self.session.peer), error=str(error))
        self._commands.clear()
        self.sendReply(result(BAD_REQUEST, str(error), error.opaque))
        self._closeWhenDone()

    def readConnectionLost(self):
        """
        The client will send nothing more: answer what it asked, then close
        (Java closes at once).
        """
        self._readLost = True
        if self._parser is not None and self._parser.incompleteError() is not None:
            MetaProtocol.readConnectionLost(self)
        else:
            self._closeWhenDone()

    def drain(self):
        """
        Take no more commands, answer every command already received (puts
        being stored get their reply once stored), then close: what the
        broker does to each connection when it stops. A command only partly
        received is dropped; its client sees the connection close before a
        reply and knows it was not stored.

        The close is a lingering one: what the client still sends is read
        and dropped, and once every reply is out the broker closes only its
        sending side and waits for the client to close. Closing a socket
        with unread input makes the kernel reset the connection, and a reset
        can destroy replies the client has received but not yet read.
        """
        if not self._connected or self._closing:
            return
        if self._parser is not None and not self._failed:
            self._parser.abandon("the broker is stopping")
        self._failed = True
        self._linger = True
        self._setUnfinished(0)
        self._stopDeadline()
        self._closeWhenDone()

    def _closeWhenDone(self):
        """
        Take no more commands; close once every command taken is answered.
        """
        self._closing = True
        self._maybeClose()

    def _maybeClose(self):
        if (self._closing and self._connected and not self._output
                and not self._commands and not self._inFlight):
            if self._linger and self._sendfile and not self._halfClosed:
                # Plain TCP: end our output and let the client close
                # (readConnectionLost then closes the rest); the drain
                # timeout aborts one that does not.
                self._halfClosed = True
                self.transport.loseWriteConnection()
            elif not self._halfClosed or self._readLost:
                self.transport.loseConnection()

    # Output

    def sendReply(self, reply):
        """
        Send C{reply} (a command, a L{FileRegion} or L{None} for none) once
        everything queued before it is out.
        """
        if reply is None or not self._connected:
            return
        poller = self.factory.idlePoller
        if poller is not None and not self._inFlight:
            # This client waits for nothing more: its next request is
            # near (docs/performance.md, idlePollMicros).
            poller.poke()
        self._output.append(reply)
        if self._paused:
            return
        if self._corked:
            # A get's reply is not held back: sending it is what tells
            # whether the client reads (back-pressure) before more
            # requests are handled.
            if isinstance(reply, FileRegion):
                self._flush()
        elif len(self._output) == 1:
            self._flush()

    def _flush(self):
        while self._output and not self._paused and self._connected:
            reply = self._output[0]
            if isinstance(reply, FileRegion):
                try:
                    if self._sendfile:
                        if not self._sendRegion(reply):
                            return
                        chunk = None
                    else:
                        chunk = reply.nextChunk()
                except OSError as e:
                    self.log.error("Sending a reply body to {peer} failed: {error}",
                                   peer=hostPort(self.session.peer), error=errorText(e))
                    self.transport.abortConnection()
                    return
                if chunk is None:
                    self._output.popleft()
                    continue
            else:
                # The replies ready one after the other go out in one write.
                output = self._output
                if len(output) == 1:
                    chunk = output.popleft().encode()
                else:
                    parts = []
                    while output and not isinstance(output[0], FileRegion):
                        parts.append(output.popleft().encode())
                    chunk = parts[0] if len(parts) == 1 else b"".join(parts)
                if self._sendfile:
                    writeNow(self.transport, chunk)
                    continue
            self.transport.write(chunk)
        self._maybeClose()

    def _uncork(self):
        """
        Send the replies held back while corked (see L{dataReceived} and
        L{_replied}), in one write.
        """
        self._corked = False
        if self._output and not self._paused:
            self._flush()
        else:
            self._maybeClose()

    def _sendRegion(self, region):
        """
        Send C{region} straight to the socket, which is only allowed once
        the transport has written everything it buffered; otherwise, or
        when the socket is full, pause until the transport says it can
        write again.

        @return: whether the region is completely sent.
        """
        if not isIdle(self.transport):
            self._awaitDrain()
            return False
        try:
            return region.sendTo(directSocket(self.transport))
        except BlockingIOError:
            self._awaitDrain()
            return False

    def _awaitDrain(self):
        # A paused streaming producer is resumed by the transport when its
        # buffer is empty and the socket writable (FileDescriptor.doWrite).
        self.pauseProducing()
        awaitWritable(self.transport)

    def pauseProducing(self):
        self._paused = True
        self.transport.pauseProducing()
        # The broker stops reading: the client is not slow.
        self._stopDeadline()

    def resumeProducing(self):
        self.resetTimeout()
        self._paused = False
        if self._unfinished and not self._failed:
            self._startDeadline()
        self._flush()
        while self._commands and not self._paused and not self._output:
            self._handle(self._commands.popleft())
        self._maybeClose()
        if not (self._paused or self._closing) and self._connected:
            self.transport.resumeProducing()

    def stopProducing(self):
        self._paused = True


class ConsumerFilters:
    """
    The server-side consumer filters of C{[topic=…] group.<group>=<path>}
    (Java C{ConsumerFilterManager}), loaded on first use.
    """

    log = Logger()

    def __init__(self, config):
        self.config = config
        self._loaded = {}

    def find(self, topic, group):
        """
        The filter for C{group} reading C{topic}, or L{None}.
        """
        path = self.config.topicConfig(topic).filters.get(group)
        if path is None:
            return None
        if path not in self._loaded:
            self._loaded[path] = self._load(path)
        return self._loaded[path]

    def _load(self, path):
        obj = namedAny(path)
        if isinstance(obj, type):
            obj = obj()
        if not IMessageFilter.providedBy(obj):
            raise TypeError(f"{path} does not provide IMessageFilter")
        return obj

    def apply(self, messageFilter, group, data):
        """
        The accepted messages of C{data} (stored records, maybe ending in a
        partial one) and the number of bytes of complete records scanned.
        """
        accepted = []
        position = 0
        decoded, consumed = records.decodeRecords(data, verify=False)
        for record in decoded:
            try:
                keep = messageFilter.accept(group, record)
            except Exception:
                self.log.failure("Filter {filter!r} failed", filter=repr(messageFilter))
                keep = False
            if keep:
                accepted.append(data[position:position + record.size])
            position += record.size
        return b"".join(accepted), consumed


class BrokerProcessor:
    """
    The answers of a plain broker to C{put}, C{get}, C{offset}, C{version}
    and C{stats} (docs/protocol.md).

    @ivar registerTopic: called with a topic's name the first time a put
        reaches it (the ZooKeeper registration), or L{None}.
    """

    log = Logger()

    def __init__(self, config, storeManager, stats, idWorker, hostName):
        self.config = config
        self.storeManager = storeManager
        self.stats = stats
        self.idWorker = idWorker
        self.hostName = hostName
        self.registerTopic = None
        self.filters = ConsumerFilters(config)
        self.refusals = RateLimitedLog(self.log)
        self._registered = set()

    def genErrorMessage(self, topic, partition):
        return (f"Put message to [broker 'meta://{self.hostName}:{self.stats.port}'] "
                f"[partition '{topic}-{partition}'] failed.")

    def _partitionString(self, partition):
        return f"{self.config.brokerId}-{partition}"

    def processPut(self, command, session):
        """
        The reply to a plain put, or a Deferred of it (L{putThen}).
        """
        return replyOrDeferred(self.putThen, command, session)

    def putThen(self, command, session, replied):
        """
        Handle a plain put: the reply of a refused put is returned; that of
        a put given to its store is passed to C{replied} once the store
        acknowledges or fails it (maybe before this returns), and
        L{REPLY_LATER} is returned.  What the broker's connections use:
        no Deferred and no callback chain per put.
        """
        topic = command.topic
        partitionString = self._partitionString(command.partition)
        self.stats.statsPutMessage(topic, partitionString, len(command.data))
        if self.config.isClosedPartition(topic, command.partition):
            return result(FORBIDDEN, self._closedText(topic, command.partition, partitionString),
                          command.opaque)
        partition = -1
        try:
            partition = command.partition
            if partition == -1:
                partition = self.storeManager.chooseRandomPartition(topic)
            store = self.storeFor(topic, partition)
            self.registered(topic)
            msgId = self.idWorker.nextId()
            checksum = command.checksum
            if checksum == -1:
                checksum = None
            elif checksum != records.checksum(command.data):
                raise ValueError(CHECKSUM_FAILURE)
            if store.readOnly is not None:
                raise PartitionReadOnly(topic, partition, store.readOnly)
        except Exception as e:
            self.stats.statsPutFailed(topic, partitionString)
            return result(INTERNAL_ERROR, self._refusedText(topic, partition, e), command.opaque)

        opaque = command.opaque

        def stored(offset):
            replied(newResult(OK, b"%d %d %d" % (msgId, partition, offset), opaque))

        def failed(failure):
            replied(self._appendFailed(failure, topic, partition, partitionString, opaque))

        store.appendThen(msgId, command.flag, command.data, checksum, stored, failed)
        return REPLY_LATER

    def _closedText(self, topic, partition, partitionString):
        """
        What a put to a closed partition is told.
        """
        return (self.genErrorMessage(topic, partition)
                + f"Detail:partition[{partitionString}] has been closed")

    def _refusedText(self, topic, partition, error):
        """
        Log (one line per kind an interval) that a put was refused for
        C{error}, and say what it is told.
        """
        self.refusals.warn(
            "put-refused:" + type(error).__name__,
            "Refused a put to {topic}-{partition}: {error}",
            topic=topic, partition=partition, error=describeWriteError(error))
        return self.genErrorMessage(topic, partition) + f"Detail:{describeWriteError(error)}"

    def registered(self, topic):
        """
        A put reached C{topic}: register it (L{registerTopic}) the first
        time.
        """
        if topic not in self._registered:
            self._registered.add(topic)
            if self.registerTopic is not None:
                self.registerTopic(topic)

    def _appendFailed(self, failure, topic, partition, partitionString, opaque):
        """
        The reply to a put its store failed to append.
        """
        self.stats.statsPutFailed(topic, partitionString)
        return result(INTERNAL_ERROR, self._appendFailure(failure, topic, partition), opaque)

    def _appendFailure(self, failure, topic, partition):
        """
        Log that a store failed an append (once, however many puts it
        held) and say what its puts' replies tell the client.
        """
        error = failure.value
        if isinstance(error, (PartitionReadOnly, SegmentLost)):
            # The store logged the damage once; the client is told.
            return self.genErrorMessage(topic, partition) + f"Detail:{error}"
        if not isinstance(error, OSError):
            self.log.failure("Append to {topic}-{partition} failed", failure,
                             topic=topic, partition=partition)
            return self.genErrorMessage(topic, partition)
        # An I/O error is the disk's state, not a bug: one line per
        # interval, and the client is told what happened.
        self.refusals.error(
            "append-failed:" + errno.errorcode.get(error.errno, "?"),
            "Append to {topic}-{partition} failed: {error}",
            topic=topic, partition=partition, error=describeWriteError(error))
        return self.genErrorMessage(topic, partition) + f"Detail:{describeWriteError(error)}"

    def putBatchThen(self, puts, session, replied):
        """
        Handle the whole plain puts of one read together (the broker's bulk
        path, L{BrokerFactory._putBatchThen}; each to a partition of 0 or
        more, none in a transaction): each is counted and checked as
        L{putThen} does, with the same refusals, but what depends only on
        its partition (closed, its store, read-only) is found once per
        partition; those to one partition are stored as one append of
        their records (L{MessageStore.appendRecordsThen}: one store entry
        and one callback however many), and the replies to all of them,
        refusals included, go to C{replied} in one L{Replies} once every
        partition has stored (or failed) its part.  A refusal waits for
        the others' fsync: the client matches replies by opaque.

        @return: L{REPLY_LATER}, or the L{Replies} when every put is
            refused.
        """
        # One id for each put, taken at once: a refused put leaves a gap.
        ids = iter(self.idWorker.nextIds(len(puts)))
        return storeByPartition(
            puts, lambda topic, partition: _PartitionPuts(self, topic, partition, ids), replied)

    def storeFor(self, topic, partition):
        """
        The store of a put's partition (the manager's C{storeFor}, which
        remembers it).  Also used by the sync master and slave for each put
        and C{sync}.
        """
        return self.storeManager.storeFor(topic, partition)

    def processGet(self, command, session):
        topic, group, opaque = command.topic, command.group, command.opaque
        self.stats.statsGet(topic, group)
        if self.config.isClosedPartition(topic, command.partition):
            return result(FORBIDDEN, f"Partition[{self._partitionString(command.partition)}]"
                                     " has been closed", opaque)
        store = self.storeManager.getStore(topic, command.partition)
        if store is None:
            self.stats.statsGetMiss(topic, group)
            return result(NOT_FOUND, f"The topic `{topic}` in partition "
                                     f"`{command.partition}` is not exists", opaque)
        if command.maxSize <= 0:
            return result(BAD_REQUEST, f"Bad request,invalid max size:{command.maxSize}",
                          opaque)
        return self._serve(command, store)

    def _serve(self, command, store, flushed=False):
        """
        The reply to a get of C{store}.  A get reaching the messages of
        answered commits that no fsync covers yet (docs/transactions.md)
        flushes the partition and is answered after it, as the Java broker
        serves a commit's messages right after its answer.
        """
        topic, group, opaque = command.topic, command.group, command.opaque
        try:
            size = min(self.config.maxTransferSize, command.maxSize)
            if not flushed and store.awaitsFlush(command.offset, size):
                return store.flush().addBoth(
                    lambda ignored: self._serve(command, store, flushed=True))
            try:
                messages = store.slice(command.offset, size)
            except OffsetBeforeStart:
                self.stats.statsGetMiss(topic, group)
                self.stats.statsGetFailed(topic, group)
                self.stats.statsOffset(topic, group)
                return result(MOVED, str(store.nearestOffset(command.offset)), opaque)
            except DamagedRecords as e:
                # Never serve known damage: the consumer moves past it (both
                # the Java and our client follow a 301).
                self.stats.damagedGets += 1
                self.stats.statsGetFailed(topic, group)
                self.stats.statsOffset(topic, group)
                return result(MOVED, str(e.nextOffset), opaque)
            if messages is None:
                return self._beyondEnd(command, store)
            messageFilter = self.filters.find(topic, group)
            if messageFilter is None:
                return FileRegion(valueHeader(messages.length, opaque), messages.fileno(),
                                  messages.position, messages.length, messages)
            data, scanned = self.filters.apply(messageFilter, group, messages.read())
            if not data:
                return result(MOVED, str(command.offset + scanned), opaque)
            return ValueCommand(data, opaque)
        except Exception as e:
            if isinstance(e, OSError):
                self.refusals.error(
                    "get-failed:" + errno.errorcode.get(e.errno, "?"),
                    "Get from {topic}-{partition} failed: {error}",
                    topic=topic, partition=command.partition, error=str(e))
            else:
                self.log.failure("Get from {topic}-{partition} failed",
                                 topic=topic, partition=command.partition)
            self.stats.statsGetFailed(topic, group)
            return result(INTERNAL_ERROR,
                          self.genErrorMessage(topic, command.partition) + f"Detail:{e}",
                          opaque)

    def _beyondEnd(self, command, store):
        topic, group = command.topic, command.group
        self.stats.statsGetMiss(topic, group)
        self.stats.statsGetFailed(topic, group)
        maxOffset = store.maxOffset
        if store.readOnly is not None and command.offset != LONG_MAX:
            # Its end may be lost, not reached: moving the consumer back
            # to it would hand it old messages again.
            return result(NOT_FOUND, f"Could not find message at position {command.offset}",
                          command.opaque)
        if command.offset > maxOffset and (
            self.config.updateConsumerOffsets or command.offset == LONG_MAX
        ):
            self.stats.statsOffset(topic, group)
            return result(MOVED, str(maxOffset), command.opaque)
        return result(NOT_FOUND, f"Could not find message at position {command.offset}",
                      command.opaque)

    def processOffset(self, command, session):
        self.stats.statsOffset(command.topic, command.group)
        store = self.storeManager.getStore(command.topic, command.partition)
        if store is None:
            return result(NOT_FOUND, f"The topic `{command.topic}` in partition "
                                     f"`{command.partition}` is not exists", command.opaque)
        # Clients ask again for an offset after a record failed its checksum:
        # have its segment verified soon, so that known damage is skipped.
        self.storeManager.suspectDamage(store, command.offset)
        return result(OK, str(store.nearestOffset(command.offset)), command.opaque)

    def processVersion(self, command, session):
        return result(OK, METAQ_VERSION, command.opaque)

    def processStats(self, command, session):
        if command.item == "config":
            return self._statsConfig(command.opaque)
        return result(OK, self.stats.statsInfo(command.item), command.opaque)

    def _statsConfig(self, opaque):
        path = self.config.path
        if path is None:
            # A standalone broker has no file; Java's path would be null.
            return result(INTERNAL_ERROR, "Config file not found:null", opaque)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return result(INTERNAL_ERROR, f"Config file not found:{path}", opaque)
        except OSError as e:
            return result(INTERNAL_ERROR, f"Read config file error:{e}", opaque)
        return ResultCommand(OK, redactSecrets(data), opaque)


@implementer(ITransactionProcessor)
class _PartitionPuts:
    """
    The plain puts of one read to one partition
    (L{BrokerProcessor.putBatchThen}): their records, stored as one append,
    what their replies need, and the refusals of those that are not
    stored.  The partition is looked at once, however many puts.

    @ivar store: the partition's store, or L{None} when it refuses them all.
    @ivar refusal: the C{(code, text)} of that refusal, or L{None}.
    @ivar ids: where the message id of each put it stores comes from.
    @ivar sizes: the size of each put's body, for the statistics.
    @ivar records: the header and body of each record to store, in order.
    @ivar replies: C{(msgId, opaque, record size)} of each, in order.
    @ivar refused: the encoded refusals.
    @ivar answer: the L{JoinedReplies} told of the outcome.
    """

    __slots__ = ("processor", "topic", "partition", "partitionString", "store", "refusal", "ids",
                 "sizes", "records", "replies", "refused", "answer")

    def __init__(self, processor, topic, partition, ids):
        self.processor = processor
        self.ids = ids
        self.topic = topic
        self.partition = partition
        self.partitionString = processor._partitionString(partition)
        self.store = None
        self.refusal = None
        self.sizes = []
        self.records = []
        self.replies = []
        self.refused = []
        self.answer = None
        if processor.config.isClosedPartition(topic, partition):
            self.refusal = (FORBIDDEN, processor._closedText(topic, partition, self.partitionString))
            return
        try:
            store = processor.storeFor(topic, partition)
            processor.registered(topic)
            if store.readOnly is not None:
                raise PartitionReadOnly(topic, partition, store.readOnly)
        except Exception as e:
            self.refusal = (INTERNAL_ERROR, processor._refusedText(topic, partition, e))
        else:
            self.store = store

    def add(self, put):
        """
        Take C{put}: its record and reply for the append, or its refusal
        (the partition's, or its body fails its checksum).
        """
        data = put.data
        self.sizes.append(len(data))
        refusal = self.refusal
        if refusal is None:
            msgId = next(self.ids)
            checksum = put.checksum
            if checksum == -1:
                checksum = None
            elif checksum != records.checksum(data):
                refusal = (INTERNAL_ERROR, self.processor._refusedText(
                    self.topic, self.partition, ValueError(CHECKSUM_FAILURE)))
        if refusal is not None:
            code, text = refusal
            if code != FORBIDDEN:
                self.processor.stats.statsPutFailed(self.topic, self.partitionString)
            self.refused.append(result(code, text, put.opaque).encode())
            return
        # Verified: the record keeps the checksum rather than computing it again.
        self.records.append(records.encodeHeader(msgId, put.flag, data, checksum))
        self.records.append(data)
        self.replies.append((msgId, put.opaque, records.HEADER_SIZE + len(data)))

    def encodedRefusals(self):
        return self.refused

    append = appendRecords

    def count(self):
        """
        Count every put added, refused ones included (as L{putThen} does).
        """
        self.processor.stats.statsPutMessages(self.topic, self.partitionString, self.sizes)

    def stored(self, offset):
        """
        The records are stored from C{offset} on, one after the other: each
        put's reply is its id, the partition and its own offset, as
        L{BrokerProcessor.putThen} answers it.
        """
        self.answer.add(storedReplies(self.replies, self.partition, offset))

    def failed(self, failure):
        """
        The append failed: each put gets the reply a put alone gets; the
        failure is logged once for them all.
        """
        processor = self.processor
        text = processor._appendFailure(failure, self.topic, self.partition)
        encoded = []
        for msgId, opaque, size in self.replies:
            processor.stats.statsPutFailed(self.topic, self.partitionString)
            encoded.append(result(INTERNAL_ERROR, text, opaque).encode())
        self.answer.add(b"".join(encoded))


class NoTransactionProcessor:
    """
    Answers transaction commands as a Java broker does for transactions it
    does not know, until the transaction processor is plugged in: BEGIN is
    refused as on a broker without transaction support, every other
    operation finds no such transaction.
    """

    def processTransaction(self, command, session):
        if command.type == "END":
            return None
        if command.type == "RECOVER":
            return ResultCommand(OK, b"", command.opaque)
        if command.type == "BEGIN":
            return result(INTERNAL_ERROR, "Unsupported beginTransaction", command.opaque)
        return result(INTERNAL_ERROR, self._notStarted(command.transactionKey), command.opaque)

    def processPut(self, command, session):
        return result(INTERNAL_ERROR, self._notStarted(command.transactionKey), command.opaque)

    def _notStarted(self, key):
        if key.startswith("XID:"):
            return f"XAException:code=-4,msg=XA transaction '{key}' has not been started."
        return f"Local transaction '{key}' has not been started."

    def sessionClosed(self, session):
        pass


class _Refusal(protocol.Protocol):
    """
    A connection the broker does not take: one C{result} saying why, then
    closed (what the client sends is not read).
    """

    def __init__(self, reply):
        self.reply = reply

    def connectionMade(self):
        self.transport.write(self.reply.encode())
        self.transport.loseConnection()


class BrokerFactory(protocol.ServerFactory):
    """
    The state every connection shares, and the routing of commands to
    processors.

    @ivar processor: answers C{put}, C{get}, C{offset}, C{stats} and
        C{version}: the L{BrokerProcessor}, or a replication mode's or
        the fence's processor in its place.
    @ivar transactionProcessor: an L{ITransactionProcessor}.
    @ivar syncProcessor: an L{ISyncProcessor}, or L{None} to answer C{sync}
        with 503.
    @ivar access: the L{AccessGate} every command passes first.
    """

    protocol = BrokerProtocol
    log = Logger()
    #: No "Starting factory <object at 0x...>" lines: the service logs
    #: where the broker listens.
    noisy = False

    def __init__(self, processor, stats, transactionProcessor=None, syncProcessor=None,
                 idleTimeout=IDLE_TIMEOUT, access=None):
        self.processor = processor
        self.access = access or AccessGate(AccessRules)
        self.stats = stats
        self.transactionProcessor = transactionProcessor or NoTransactionProcessor()
        self.syncProcessor = syncProcessor
        self.idleTimeout = idleTimeout
        self.config = processor.config
        self.connections = set()
        #: Open connections by the peer's address (maxConnectionsPerHost).
        self._perHost = {}
        self._corked = []
        self._uncorkCall = None
        self.refusals = RateLimitedLog(self.log)
        self._drained = None
        #: Bytes of requests being received, over all connections.
        self.unfinishedBytes = 0
        self.maxUnfinishedBytes = self.config.maxUnfinishedRequestBytes
        self.requestDeadline = self.config.maxRequestSeconds
        #: The L{metamorphosis.broker.idlepoll.IdlePoller} told of every
        #: reply that leaves its connection waiting for nothing, or L{None}
        #: (C{idlePollMicros=0}).
        self.idlePoller = None
        #: Called before each read is handled: the group commit fsyncs'
        #: L{metamorphosis.broker.store.interfaces.IFsync.keepAwake}, once
        #: the stores chose them.
        self.keepDiskAwake = _nothing

    @property
    def processor(self):
        return self._processor

    @processor.setter
    def processor(self, processor):
        # Whether puts take the path without a Deferred is decided here,
        # once, not per put.
        self._processor = processor
        self._putThen = putThenOf(processor)
        self.putBatchThen = putBatchThenOf(processor)

    def uncorkSoon(self, proto):
        """
        Send the held replies of C{proto} at the next reactor turn, with
        those of every other connection held in this one: one timer per
        burst of acknowledgements, not one per connection.
        """
        self._corked.append(proto)
        if self._uncorkCall is None:
            self._uncorkCall = proto.callLater(0, self._uncorkAll)

    def _uncorkAll(self):
        self._uncorkCall = None
        corked, self._corked = self._corked, []
        for proto in corked:
            proto._uncork()

    def buildProtocol(self, addr):
        """
        A connection past C{maxConnections} is told why and closed: each one
        holds a descriptor and buffers, and a client that opens them without
        end (a connection leak) must not take the broker's last ones.  Past
        C{maxConnectionsPerHost} from one address likewise, so that one
        leaking or hostile host cannot take all of C{maxConnections} from
        the others (a Java client opens one connection per broker).
        """
        limit = self.config.maxConnections
        if limit and len(self.connections) >= limit:
            self.refusals.warn(
                "max-connections", "Refused a connection from {peer}: {limit} are open "
                "(maxConnections)", peer=hostPort(addr), limit=limit)
            return _Refusal(result(
                SERVICE_UNAVAILABLE,
                f"The broker has {limit} connections open (maxConnections); try again later", 0))
        limit = self.config.maxConnectionsPerHost
        host = getattr(addr, "host", None)
        if limit and self._perHost.get(host, 0) >= limit:
            self.refusals.warn(
                "max-connections-per-host", "Refused a connection from {peer}: {limit} are "
                "open from {host} (maxConnectionsPerHost)",
                peer=hostPort(addr), limit=limit, host=host)
            return _Refusal(result(
                SERVICE_UNAVAILABLE,
                f"The broker has {limit} connections open from {host} "
                "(maxConnectionsPerHost); try again later", 0))
        return protocol.ServerFactory.buildProtocol(self, addr)

    def connectionOpened(self, proto):
        self.connections.add(proto)
        self.stats.connections = len(self.connections)
        host = getattr(proto.session.peer, "host", None)
        self._perHost[host] = self._perHost.get(host, 0) + 1

    def drain(self, timeout, clock=None):
        """
        Drain every connection (L{BrokerProtocol.drain}); abort those still
        open after C{timeout} seconds.

        @return: a Deferred firing once every connection is closed.
        """
        if clock is None:
            from twisted.internet import reactor as clock
        if not self.connections:
            return defer.succeed(None)
        self._drained = defer.Deferred()
        for proto in list(self.connections):
            proto.drain()

        def abort():
            for proto in list(self.connections):
                self.log.warn("Closing {peer}: replies not sent within {timeout} s of "
                              "stopping", peer=hostPort(proto.session.peer),
                              timeout=timeout)
                proto.transport.abortConnection()

        timer = clock.callLater(timeout, abort)

        def done(result):
            if timer.active():
                timer.cancel()
            return result

        return self._drained.addBoth(done)

    def connectionClosed(self, proto):
        if proto in self.connections:
            self.connections.remove(proto)
            host = getattr(proto.session.peer, "host", None)
            left = self._perHost[host] - 1
            if left:
                self._perHost[host] = left
            else:
                del self._perHost[host]
        self.stats.connections = len(self.connections)
        if self._drained is not None and not self.connections:
            drained, self._drained = self._drained, None
            drained.callback(None)
        proto.session.closed = True
        self.transactionProcessor.sessionClosed(proto.session)
        if self.syncProcessor is not None:
            self.syncProcessor.sessionClosed(proto.session)

    def _unreadable(self, command, session):
        """
        The refusal of a put whose message no get could ever return (a
        get's reply holds at most C{maxTransferSize} bytes of whole
        records), or L{None}. A slave's C{sync} is not checked: its master
        accepted the message.
        """
        size = records.HEADER_SIZE + len(command.data)
        limit = self.config.maxTransferSize
        if size <= limit:
            return None
        text = (f"Put message to partition '{command.topic}-{command.partition}' failed."
                f"Detail:message of {len(command.data)} bytes is too large: with its "
                f"{records.HEADER_SIZE}-byte header it exceeds maxTransferSize ({limit}), "
                "the most a get can return")
        self.refusals.warn("message-too-large", "Refused a put from {peer}: {error}",
                           peer=hostPort(session.peer), error=text)
        return result(BAD_REQUEST, text, command.opaque)

    def _illegalTopic(self, command, session):
        """
        The refusal of C{command} whose topic is not a legal name (logged
        at most once a minute), or L{None}.
        """
        try:
            checkTopic(command.topic, self.config.maxTopicNameLength)
        except IllegalTopicName as e:
            self.refusals.warn("illegal-topic", "Refused a request from {peer}: {error}",
                               peer=hostPort(session.peer), error=str(e))
            return result(BAD_REQUEST, str(e), command.opaque)
        return None

    def _syncBatchThen(self, syncs, session, replied):
        """
        The whole syncs of one read (a L{SyncBatch}): each checked as
        L{dispatch} checks one (its topic's name, access), those that pass
        given to the sync processor together (L{ISyncProcessor.syncBatchThen}),
        and all of them answered in one L{Replies}: returned, or passed to
        C{replied} (L{REPLY_LATER}).  A sync slave's bulk path: one call
        per read rather than one dispatch, one store entry and one reply
        per sync.
        """
        processor = self.syncProcessor
        refused, accepted = self._screened(syncs, session)
        if processor is None:
            # Not a sync slave: each refused as one alone (refusals come
            # first in a batch's reply, whichever they are).
            refused.extend(_noSyncProcessor(sync).encode() for sync in accepted)
            return Replies(b"".join(refused))
        return self._withRefusals(refused, processor.syncBatchThen, accepted, session, replied)

    def _putBatchThen(self, puts, session, replied):
        """
        The whole plain puts of one read (a L{PutBatch}), checked each as
        L{dispatch} checks one (its topic's name, access, its size), those
        that pass given to the processor together
        (L{BrokerProcessor.putBatchThen}), and all of them answered in one
        L{Replies}: returned, or passed to C{replied} (L{REPLY_LATER}).
        The Java producer's bulk path: its threads share one connection,
        so one read brings several of their puts, and they cost one
        dispatch, one store entry per partition and one reply.
        """
        refused, accepted = self._screened(puts, session, self.config.maxTransferSize - records.HEADER_SIZE)
        return self._withRefusals(refused, self.putBatchThen, accepted, session, replied)

    def _screened(self, commands, session, largest=None):
        """
        The commands of a batch (a L{PutBatch}'s puts, a L{SyncBatch}'s
        syncs) checked each as L{dispatch} checks one: its topic's name
        (once a topic), its access (only under C{[access]} rules), then,
        unless C{largest} is L{None}, its body's size (a put's: no more
        than C{largest}, L{_unreadable}).

        @return: the encoded refusals and the commands that passed, each
            in order.
        """
        refused = []
        accepted = []
        legal = set()
        # Without [access] rules every command passes: no check each.
        check = self.access.check if self.access.rules().enabled else None
        for command in commands:
            topic = command.topic
            if topic not in legal:
                refusal = self._illegalTopic(command, session)
                if refusal is not None:
                    refused.append(refusal.encode())
                    continue
                legal.add(topic)
            refusal = None if check is None else check(command, session)
            if refusal is None and largest is not None and len(command.data) > largest:
                refusal = self._unreadable(command, session)
            if refusal is not None:
                refused.append(refusal.encode())
            else:
                accepted.append(command)
        return refused, accepted

    def _withRefusals(self, refused, then, accepted, session, replied):
        """
        C{then(accepted, session, …)} (a processor's C{putBatchThen} or
        C{syncBatchThen}), with the encoded C{refused} replies before what
        it answers, in one L{Replies}.
        """
        if not accepted:
            return Replies(b"".join(refused))
        if not refused:
            return then(accepted, session, replied)
        refusals = b"".join(refused)

        def joined(replies):
            replied(Replies(refusals + replies.encoded))

        replies = then(accepted, session, joined)
        if replies is REPLY_LATER:
            return REPLY_LATER
        return Replies(refusals + replies.encoded)

    def dispatch(self, command, session, replied=None):
        """
        The reply to C{command}: a command, a L{FileRegion}, L{None} or a
        Deferred of one of those; or L{REPLY_LATER} when C{replied} (a
        callable) was given and will be called with the reply: a plain put
        handled by a processor whose class has C{putThen} (L{putThenOf}:
        the broker's own, the sync master's, the fence's), a C{sync}
        (L{ISyncProcessor.syncThen}) or a L{SyncBatch} (L{_syncBatchThen}).
        Any other processor answers puts through C{processPut}, maybe with
        a Deferred.
        """
        if getattr(command, "topic", None) is not None:
            # Before any processor, store, file or ZooKeeper node sees it.
            refusal = self._illegalTopic(command, session)
            if refusal is not None:
                return refusal
        elif isinstance(command, SyncBatch):
            if replied is None:
                return replyOrDeferred(self._syncBatchThen, command.syncs, session)
            return self._syncBatchThen(command.syncs, session, replied)
        elif isinstance(command, PutBatch):
            if self.putBatchThen is None:
                # The connections hand such a processor the puts one by
                # one (BrokerProtocol._handle).
                raise TypeError("the processor takes no PutBatch")
            if replied is None:
                return replyOrDeferred(self._putBatchThen, command.puts, session)
            return self._putBatchThen(command.puts, session, replied)
        refusal = self.access.check(command, session)
        if refusal is not None:
            return refusal
        processor = self._processor
        if isinstance(command, PutCommand):
            if records.HEADER_SIZE + len(command.data) > self.config.maxTransferSize:
                return self._unreadable(command, session)
            if command.transactionKey is not None:
                return self.transactionProcessor.processPut(command, session)
            if replied is not None and self._putThen is not None:
                return self._putThen(command, session, replied)
            return processor.processPut(command, session)
        # Second: a sync slave takes one per message.
        if isinstance(command, SyncCommand):
            if self.syncProcessor is None:
                return _noSyncProcessor(command)
            if replied is not None:
                return self.syncProcessor.syncThen(command, session, replied)
            return self.syncProcessor.processSync(command, session)
        # Third: two of the three requests of a one-message transaction.
        if isinstance(command, TransactionCommand):
            return self.transactionProcessor.processTransaction(command, session)
        if isinstance(command, GetCommand):
            return processor.processGet(command, session)
        if isinstance(command, OffsetCommand):
            return processor.processOffset(command, session)
        if isinstance(command, StatsCommand):
            return processor.processStats(command, session)
        if isinstance(command, VersionCommand):
            return processor.processVersion(command, session)
        # A result or value line sent to the broker is a response nobody
        # waits for: gecko drops it.
        self.log.debug("Ignoring {command}", command=repr(command))
        return None
