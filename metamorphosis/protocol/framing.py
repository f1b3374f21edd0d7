"""
A Twisted protocol that turns a MetaQ byte stream into commands.

L{MetaProtocol} feeds whatever TCP delivers to a L{CommandParser} and calls
C{commandReceived} once per complete command; it is the base of the
broker's and the client's connection protocols.

Why a custom C{dataReceived} parser and not C{LineReceiver} in raw mode:
measured with C{benchmarks/codec.py} (one core), L{CommandParser} framing
and decoding together handles about 185,000 1 KiB puts/s, 295,000 gets/s and
13,000 1 MiB values/s from 64 KiB reads, while C{LineReceiver} framing the
same streams and handing each framed command to the same codec manages
about 100,000, 170,000 and 7,700: the line receiver keeps its own buffer and
the body must then be gathered and copied again, and every header still
has to be split, typed and checked by the codec, which already keeps the
state (a pending body length, buffered bytes) needed to frame.  The parser
copies a body a constant number of times however it is chunked (no
quadratic buffer growth).
"""

from twisted.internet import protocol
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.logger import Logger
from zope.interface import implementer

from metamorphosis.logfields import errorText, hostPort
from metamorphosis.protocol.commands import (
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_MAX_LINE_LENGTH,
    CommandParser,
    ProtocolError,
)

__all__ = ["MetaProtocol"]


@implementer(IHalfCloseableProtocol)
class MetaProtocol(protocol.Protocol):
    """
    Frame and decode MetaQ commands from a connection.

    Subclasses implement L{commandReceived}.  A malformed command goes to
    L{protocolErrorReceived} and nothing more is decoded from that
    connection; an exception raised by L{commandReceived} is logged and
    closes the connection.  Neither ever reaches the reactor.

    The protocol is half-closeable: when the peer stops sending in the
    middle of a command, the error can still be answered before closing.

    @cvar maxBodySize: the largest body accepted (a larger declared length
        is a L{ProtocolError}).
    @cvar maxLineLength: the longest header line accepted.
    @cvar syncBatches: whether whole C{sync} commands in a row come as one
        L{metamorphosis.protocol.commands.SyncBatch} (L{CommandParser}).
    @cvar putBatches: the same for plain C{put} commands
        (L{metamorphosis.protocol.commands.PutBatch}).
    """

    maxBodySize = DEFAULT_MAX_BODY_SIZE
    maxLineLength = DEFAULT_MAX_LINE_LENGTH
    syncBatches = False
    putBatches = False

    _log = Logger()
    _parser: CommandParser | None = None
    _failed = False

    def dataReceived(self, data: bytes) -> None:
        if self._failed:
            return
        if self._parser is None:
            self._parser = CommandParser(self.maxBodySize, self.maxLineLength, self.syncBatches,
                                         self.putBatches)
        try:
            try:
                for command in self._parser.parse(data):
                    self.commandReceived(command)
                    if self.transport.disconnecting:
                        return
            except ProtocolError as error:
                self._fail(error)
        except Exception:
            self._crashed()

    def commandReceived(self, command) -> None:
        """
        Handle one decoded command.  Override this.
        """
        raise NotImplementedError(f"{type(self).__name__} does not handle {command!r}")

    def protocolErrorReceived(self, error: ProtocolError) -> None:
        """
        The input is malformed.  By default log it and close the connection
        without a reply, as the Java peers do; the broker overrides this to
        answer with C{result 400} first (L{metamorphosis.broker.server}).
        """
        self._log.warn(
            "Malformed input from {peer}, closing the connection: {error}",
            peer=hostPort(self.transport.getPeer()),
            error=errorText(error),
        )
        self.transport.loseConnection()

    def sendCommand(self, command) -> None:
        self.transport.write(command.encode())

    def readConnectionLost(self) -> None:
        """
        The peer will send nothing more: a command cut short is an error
        (which can still be answered); otherwise close, as Java does.
        """
        error = None if self._parser is None else self._parser.incompleteError()
        if error is None or self._failed:
            self.transport.loseConnection()
            return
        try:
            self._fail(error)
        except Exception:
            self._crashed()

    def writeConnectionLost(self) -> None:
        """
        Nothing to do: this protocol never closes only its writing side.
        """

    def connectionLost(self, reason=protocol.connectionDone) -> None:
        error = None if self._parser is None else self._parser.incompleteError()
        if error is not None and not self._failed:
            self._failed = True
            self._log.info(
                "Connection from {peer} lost within a command: {error}",
                peer=hostPort(self.transport.getPeer()),
                error=errorText(error),
            )

    def _fail(self, error: ProtocolError) -> None:
        self._failed = True
        self.protocolErrorReceived(error)

    def _crashed(self) -> None:
        """
        A handler raised: log it with its traceback and close, so that
        nothing reaches the reactor.
        """
        self._failed = True
        self._log.failure(
            "Error handling input from {peer}; closing the connection",
            peer=hostPort(self.transport.getPeer()),
        )
        self.transport.loseConnection()
