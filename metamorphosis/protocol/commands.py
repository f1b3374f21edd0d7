"""
The MetaQ 1.4.x text protocol: every command in both directions.

A command is a header line ended by CR LF, split on single spaces the way
Java's C{Pattern.split(" ")} does (inner empty tokens kept, trailing ones
dropped), and for C{put}, C{sync}, C{result} and C{value} a raw body whose
length is a field of the line.  The decoder dispatches on the first
character of the first word and accepts exactly what the Java
C{MetaCodecFactory} decoder accepts (docs/protocol.md), with
Java's number parsing (L{parseJavaInt}); the encoders write exactly the
bytes the Java command classes write.

Everything the Java decoder would reject raises L{ProtocolError}; nothing
else escapes L{CommandParser}.
"""

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar

from metamorphosis.protocol.javalang import isJavaBlank, isJavaDigit, parseJavaInt
from metamorphosis.protocol.txid import canonicalKey, parseTransactionId

__all__ = [
    "DEFAULT_OPAQUE",
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_MAX_LINE_LENGTH",
    "TRANSACTION_TYPES",
    "ProtocolError",
    "PutCommand",
    "GetCommand",
    "OffsetCommand",
    "StatsCommand",
    "VersionCommand",
    "QuitCommand",
    "TransactionCommand",
    "SyncCommand",
    "SyncBatch",
    "PutBatch",
    "ResultCommand",
    "ValueCommand",
    "CommandParser",
    "valueHeader",
    "javaSplit",
    "newPut",
    "newResult",
    "newTransaction",
]

DEFAULT_OPAQUE = 2147483647
"""The opaque of C{stats} and C{version} sent without one (Integer.MAX_VALUE)."""

DEFAULT_MAX_BODY_SIZE = 64 * 1024 * 1024
DEFAULT_MAX_LINE_LENGTH = 64 * 1024

TRANSACTION_TYPES = (
    "BEGIN",
    "PREPARE",
    "COMMIT_ONE_PHASE",
    "COMMIT_TWO_PHASE",
    "ROLLBACK",
    "RECOVER",
    "FORGET",
    "END",
)
"""The names of Java's C{TransactionInfo.TransactionType}, in its order."""


class ProtocolError(Exception):
    """
    Input the Java decoder would reject (it closes the connection).

    @ivar opaque: the opaque of the offending request when one could be read
        from its line, else 0, so that a reply can still be correlated.
    """

    def __init__(self, message: str, opaque: int = 0):
        super().__init__(message)
        self.opaque = opaque


def valueHeader(length: int, opaque: int) -> bytes:
    """
    The header line of a C{value}, for a body sent from a file.
    """
    return b"value %d %d\r\n" % (length, opaque)


@dataclass(frozen=True, slots=True)
class PutCommand:
    """
    Publish one message; C{data} is the encoded payload.  C{checksum} -1
    means not supplied.  Always encoded with the checksum (7 tokens, 8 in a
    transaction), as Java clients since 1.4.4 do.
    """

    topic: str
    partition: int
    data: bytes
    flag: int
    opaque: int
    checksum: int = -1
    transactionKey: str | None = None

    def encode(self) -> bytes:
        if self.transactionKey is None:
            line = (
                f"put {self.topic} {self.partition} {len(self.data)} "
                f"{self.flag} {self.checksum} {self.opaque}\r\n"
            )
        else:
            line = (
                f"put {self.topic} {self.partition} {len(self.data)} "
                f"{self.flag} {self.checksum} {self.transactionKey} "
                f"{self.opaque}\r\n"
            )
        return line.encode("utf-8") + self.data


@dataclass(frozen=True, slots=True)
class GetCommand:
    topic: str
    group: str
    partition: int
    offset: int
    maxSize: int
    opaque: int

    def encode(self) -> bytes:
        return (
            f"get {self.topic} {self.group} {self.partition} {self.offset} "
            f"{self.maxSize} {self.opaque}\r\n"
        ).encode()


@dataclass(frozen=True, slots=True)
class OffsetCommand:
    topic: str
    group: str
    partition: int
    offset: int
    opaque: int

    def encode(self) -> bytes:
        return (
            f"offset {self.topic} {self.group} {self.partition} "
            f"{self.offset} {self.opaque}\r\n"
        ).encode()


@dataclass(frozen=True, slots=True)
class StatsCommand:
    """
    C{item} is L{None} when the line had no item and C{""} for
    C{stats  <opaque>}; the broker treats every blank item alike.  A blank
    item is encoded as an empty token (two spaces), as Java does.
    """

    item: str | None = None
    opaque: int = DEFAULT_OPAQUE

    def encode(self) -> bytes:
        item = "" if isJavaBlank(self.item) else self.item
        return f"stats {item} {self.opaque}\r\n".encode()


@dataclass(frozen=True, slots=True)
class VersionCommand:
    """
    The version request, which is also the client's heartbeat.
    """

    opaque: int = DEFAULT_OPAQUE

    def encode(self) -> bytes:
        return b"version %d\r\n" % (self.opaque,)


@dataclass(frozen=True, slots=True)
class QuitCommand:
    """
    Close the connection; it carries no opaque on the wire.
    """

    opaque: ClassVar[int] = DEFAULT_OPAQUE

    def encode(self) -> bytes:
        return b"quit\r\n"


@dataclass(frozen=True, slots=True)
class TransactionCommand:
    """
    Transaction control.  C{transactionKey} is the canonical key of the
    parsed id (what Java's C{getTransactionKey} gives back, and what Java
    clients send); C{type} one of L{TRANSACTION_TYPES}.  The timeout is
    written only when positive and the qualifier only when not blank.
    """

    transactionKey: str
    sessionId: str
    type: str
    opaque: int
    timeout: int = 0
    uniqueQualifier: str | None = None

    @property
    def transactionId(self):
        return parseTransactionId(self.transactionKey)

    def encode(self) -> bytes:
        fields = [self.transactionKey, self.sessionId, self.type]
        if self.timeout > 0:
            fields.append(str(self.timeout))
        if not isJavaBlank(self.uniqueQualifier):
            fields.append(self.uniqueQualifier)
        return f"transaction {' '.join(fields)} {self.opaque}\r\n".encode()


@dataclass(frozen=True, slots=True)
class SyncCommand:
    """
    Master to slave replication of one message with its id; always encoded
    with the checksum (8 tokens).
    """

    topic: str
    partition: int
    data: bytes
    flag: int
    msgId: int
    opaque: int
    checksum: int = -1

    def encode(self) -> bytes:
        head = syncHead(self.topic, self.partition, len(self.data), self.flag, self.msgId, self.checksum)
        return b"%s%d\r\n%s" % (head, self.opaque, self.data)


@dataclass(frozen=True, slots=True)
class SyncBatch:
    """
    Whole C{sync} commands that came one after the other in one input
    (L{CommandParser} with C{syncBatches}): a sync slave stores and answers
    them together rather than one command at a time.  Not a command of the
    protocol: its encoding is its syncs' one after the other.
    """

    syncs: list

    def encode(self) -> bytes:
        return b"".join(sync.encode() for sync in self.syncs)


@dataclass(frozen=True, slots=True)
class PutBatch:
    """
    Whole plain C{put} commands (a checksum, no transaction key, a
    partition of 0 or more) that came one after the other in one input
    (L{CommandParser} with C{putBatches}): the Java producer's threads
    share one connection, so the broker reads several of their puts at a
    time, and stores and answers them together rather than one command at
    a time.  Not a command of the protocol: its encoding is its puts' one
    after the other.
    """

    puts: list

    def encode(self) -> bytes:
        return b"".join(put.encode() for put in self.puts)


def syncHead(topic: str, partition: int, length: int, flag: int, msgId: int, checksum: int) -> bytes:
    """
    A C{sync} command's line up to its opaque (with the space before it):
    a sync master writes the line and the body to its link as they are
    (L{metamorphosis.ha.link.PeerLink.sendFrame}), without a
    L{SyncCommand} per put.
    """
    return ("sync %s %d %d %d %d %d " % (topic, partition, length, flag, msgId, checksum)).encode("utf-8")


def encodeSyncs(topic: str, partition: int, syncs, opaques) -> bytes:
    """
    The C{sync} commands of C{syncs}, each C{(msgId, flag, body, checksum)},
    to one partition, one after the other, each with its opaque of
    C{opaques}.  A sync master sends the syncs of a read's puts so
    (L{metamorphosis.ha.link.PeerLink.sendFrames}): one line formatted per
    put, no command object.
    """
    name = topic.encode("utf-8")
    chunks = []
    for (msgId, flag, body, checksum), opaque in zip(syncs, opaques):
        chunks.append(b"sync %s %d %d %d %d %d %d\r\n" % (name, partition, len(body), flag, msgId, checksum, opaque))
        chunks.append(body)
    return b"".join(chunks)


@dataclass(frozen=True, slots=True)
class ResultCommand:
    """
    A status reply; C{body} is the raw body (UTF-8 text for everything but
    C{stats config}), C{b""} for none.
    """

    code: int
    body: bytes
    opaque: int

    @property
    def message(self) -> str:
        return self.body.decode("utf-8", "replace")

    def encode(self) -> bytes:
        return b"result %d %d %d\r\n" % (self.code, len(self.body), self.opaque) + self.body


@dataclass(frozen=True, slots=True)
class ValueCommand:
    """
    The answer to a C{get}: a slice of stored messages, possibly ending in a
    truncated one.
    """

    data: bytes
    opaque: int

    def encode(self) -> bytes:
        return valueHeader(len(self.data), self.opaque) + self.data


# The commands are frozen dataclasses, whose __init__ sets each field with
# object.__setattr__ by name: about 2 us for a put on the test machine,
# a twentieth of what the broker spends on one.  The two made for every
# put (the put, its result) are also made by setting their slots through
# the slots' own descriptors, which is the same store without the lookups
# (about half the cost); tests check they equal the dataclass's.
_newObject = object.__new__
(_setPutTopic, _setPutPartition, _setPutData, _setPutFlag, _setPutOpaque, _setPutChecksum,
 _setPutKey) = (PutCommand.__dict__[name].__set__ for name in (
    "topic", "partition", "data", "flag", "opaque", "checksum", "transactionKey"))
_setResultCode, _setResultBody, _setResultOpaque = (
    ResultCommand.__dict__[name].__set__ for name in ("code", "body", "opaque"))
(_setTransactionKey, _setTransactionSession, _setTransactionType, _setTransactionOpaque,
 _setTransactionTimeout, _setTransactionQualifier) = (
    TransactionCommand.__dict__[name].__set__ for name in (
        "transactionKey", "sessionId", "type", "opaque", "timeout", "uniqueQualifier"))
(_setSyncTopic, _setSyncPartition, _setSyncData, _setSyncFlag, _setSyncId, _setSyncOpaque,
 _setSyncChecksum) = (SyncCommand.__dict__[name].__set__ for name in (
    "topic", "partition", "data", "flag", "msgId", "opaque", "checksum"))


def newPut(topic: str, partition: int, data: bytes, flag: int, opaque: int,
           checksum: int, transactionKey: str | None = None) -> PutCommand:
    """
    C{PutCommand(topic, partition, data, flag, opaque, checksum,
    transactionKey)}, faster.
    """
    command = _newObject(PutCommand)
    _setPutTopic(command, topic)
    _setPutPartition(command, partition)
    _setPutData(command, data)
    _setPutFlag(command, flag)
    _setPutOpaque(command, opaque)
    _setPutChecksum(command, checksum)
    _setPutKey(command, transactionKey)
    return command


def newTransaction(transactionKey: str, sessionId: str, type: str, opaque: int,
                   timeout: int = 0) -> TransactionCommand:
    """
    C{TransactionCommand(transactionKey, sessionId, type, opaque, timeout)},
    faster: a one-message transaction decodes two (BEGIN and COMMIT).
    """
    command = _newObject(TransactionCommand)
    _setTransactionKey(command, transactionKey)
    _setTransactionSession(command, sessionId)
    _setTransactionType(command, type)
    _setTransactionOpaque(command, opaque)
    _setTransactionTimeout(command, timeout)
    _setTransactionQualifier(command, None)
    return command


def newSync(topic: str, partition: int, data: bytes, flag: int, msgId: int, opaque: int,
            checksum: int) -> SyncCommand:
    """
    C{SyncCommand(topic, partition, data, flag, msgId, opaque, checksum)},
    faster: what a sync slave decodes for every replicated put.
    """
    command = _newObject(SyncCommand)
    _setSyncTopic(command, topic)
    _setSyncPartition(command, partition)
    _setSyncData(command, data)
    _setSyncFlag(command, flag)
    _setSyncId(command, msgId)
    _setSyncOpaque(command, opaque)
    _setSyncChecksum(command, checksum)
    return command


def newResult(code: int, body: bytes, opaque: int) -> ResultCommand:
    """
    C{ResultCommand(code, body, opaque)}, faster.
    """
    command = _newObject(ResultCommand)
    _setResultCode(command, code)
    _setResultBody(command, body)
    _setResultOpaque(command, opaque)
    return command


def javaSplit(line: str) -> list[str]:
    """
    C{Pattern.compile(" ").split(line)}: split on every single space, then
    drop trailing empty tokens (a line without a space is one token, even
    when empty).
    """
    tokens = line.split(" ")
    if len(tokens) > 1:
        while tokens and not tokens[-1]:
            tokens.pop()
    return tokens


# Decoding.  A decoder takes the tokens of a header line and returns either
# the command or a _Body that finishes it once its body has arrived.  Field
# errors are raised as ValueError with the reason; CommandParser adds the
# line and the opaque.


@dataclass(slots=True)
class _Body:
    length: int
    finish: Callable[[list[str], bytes], object]


def _expect(tokens: list[str], word: str) -> None:
    if tokens[0] != word:
        raise ValueError(f'expected "{word}", got "{tokens[0]}"')


def _need(tokens: list[str], count: int) -> None:
    if len(tokens) < count:
        raise ValueError(f"{tokens[0]} needs at least {count} tokens, got {len(tokens)}")


def _int(text: str) -> int:
    """
    A Java int field: up to nine plain ASCII digits (all but the signed
    fields of a request) need no range check; the rest go by the Java
    rules of L{parseJavaInt}.
    """
    if len(text) < 10 and text.isdigit() and text.isascii():
        return int(text)
    return parseJavaInt(text)


def _long(text: str) -> int:
    return parseJavaInt(text, bits=64)


def _bodyLength(text: str) -> int:
    length = _int(text)
    if length < 0:
        raise ValueError(f"negative body length {length}")
    return length


def _finishPut(tokens: list[str], data: bytes) -> PutCommand:
    count = len(tokens)
    if count == 7:
        slot = tokens[5]
        if not slot:
            raise ValueError("empty checksum or transaction key")
        if isJavaDigit(slot[0]) or slot[0] == "-":
            return PutCommand(
                tokens[1], _int(tokens[2]), data, _int(tokens[4]), _int(tokens[6]),
                _int(slot),
            )
        return PutCommand(
            tokens[1], _int(tokens[2]), data, _int(tokens[4]), _int(tokens[6]),
            transactionKey=canonicalKey(slot),
        )
    if count == 8:
        return PutCommand(
            tokens[1], _int(tokens[2]), data, _int(tokens[4]), _int(tokens[7]),
            _int(tokens[5]), canonicalKey(tokens[6]),
        )
    if count == 6:
        return PutCommand(tokens[1], _int(tokens[2]), data, _int(tokens[4]), _int(tokens[5]))
    raise ValueError(f"put needs 6, 7 or 8 tokens, got {count}")


def _finishSync(tokens: list[str], data: bytes) -> SyncCommand:
    count = len(tokens)
    if count not in (7, 8):
        raise ValueError(f"sync needs 7 or 8 tokens, got {count}")
    return SyncCommand(
        tokens[1], _int(tokens[2]), data, _int(tokens[4]), _long(tokens[5]),
        _int(tokens[count - 1]),
        _int(tokens[6]) if count == 8 else -1,
    )


def _finishResult(tokens: list[str], body: bytes) -> ResultCommand:
    _need(tokens, 4)
    return ResultCommand(_int(tokens[1]), body, _int(tokens[3]))


def _finishValue(tokens: list[str], data: bytes) -> ValueCommand:
    _need(tokens, 3)
    return ValueCommand(data, _int(tokens[2]))


def _decodePut(tokens):
    _expect(tokens, "put")
    _need(tokens, 4)
    return _Body(_bodyLength(tokens[3]), _finishPut)


def _decodeGet(tokens):
    _expect(tokens, "get")
    _need(tokens, 7)
    return GetCommand(
        tokens[1], tokens[2], _int(tokens[3]), _long(tokens[4]),
        _int(tokens[5]), _int(tokens[6]),
    )


def _decodeOffset(tokens):
    _expect(tokens, "offset")
    _need(tokens, 6)
    return OffsetCommand(
        tokens[1], tokens[2], _int(tokens[3]), _long(tokens[4]), _int(tokens[5])
    )


def _decodeTransaction(tokens):
    _expect(tokens, "transaction")
    _need(tokens, 4)
    key = canonicalKey(tokens[1])
    kind = tokens[3]
    if kind not in TRANSACTION_TYPES:
        raise ValueError(f'unknown transaction type "{kind}"')
    count = len(tokens)
    if count == 7:
        return TransactionCommand(
            key, tokens[2], kind, _int(tokens[6]), _int(tokens[4]), tokens[5]
        )
    if count == 6:
        # StringUtils.isNumeric: digits only (no sign), and true for "".
        if all(isJavaDigit(character) for character in tokens[4]):
            return TransactionCommand(
                key, tokens[2], kind, _int(tokens[5]), timeout=_int(tokens[4])
            )
        return TransactionCommand(
            key, tokens[2], kind, _int(tokens[5]), uniqueQualifier=tokens[4]
        )
    if count == 5:
        return TransactionCommand(key, tokens[2], kind, _int(tokens[4]))
    raise ValueError(f"transaction needs 5, 6 or 7 tokens, got {count}")


def _decodeResult(tokens):
    _expect(tokens, "result")
    _need(tokens, 3)
    return _Body(_bodyLength(tokens[2]), _finishResult)


def _decodeValueOrVersion(tokens):
    if tokens[0] == "value":
        _need(tokens, 2)
        return _Body(_bodyLength(tokens[1]), _finishValue)
    if len(tokens) >= 2:
        return VersionCommand(_int(tokens[1]))
    return VersionCommand()


def _decodeStatsOrSync(tokens):
    if tokens[0] == "stats":
        return StatsCommand(
            tokens[1] if len(tokens) >= 2 else None,
            _int(tokens[2]) if len(tokens) >= 3 else DEFAULT_OPAQUE,
        )
    _expect(tokens, "sync")
    _need(tokens, 4)
    return _Body(_bodyLength(tokens[3]), _finishSync)


def _decodeQuit(tokens):
    return QuitCommand()


_DECODERS = {
    "p": _decodePut,
    "g": _decodeGet,
    "t": _decodeTransaction,
    "r": _decodeResult,
    "v": _decodeValueOrVersion,
    "s": _decodeStatsOrSync,
    "o": _decodeOffset,
    "q": _decodeQuit,
}

# Where the opaque sits, by command word and token count, so that an error
# reply can carry the opaque of a request whose other fields are wrong.
_OPAQUE_INDEX = {
    "put": {6: 5, 7: 6, 8: 7},
    "sync": {7: 6, 8: 7},
    "transaction": {5: 4, 6: 5, 7: 6},
    "get": 6,
    "offset": 5,
    "stats": 2,
    "version": 1,
    "value": 2,
    "result": 3,
}


def _salvageOpaque(tokens: list[str]) -> int:
    index = _OPAQUE_INDEX.get(tokens[0])
    if isinstance(index, dict):
        index = index.get(len(tokens))
    if index is None or index >= len(tokens):
        return 0
    try:
        return parseJavaInt(tokens[index])
    except ValueError:
        return 0


def _malformed(line: str, tokens: list[str], reason: object) -> ProtocolError:
    return ProtocolError(f"Invalid command {line!r}: {reason}", _salvageOpaque(tokens))


#: The header line of a put as Java clients send it (7 tokens: topic,
#: partition, body length, flag, checksum, opaque; 8 in a transaction, the
#: transaction key before the opaque), every token plain ASCII
#: and every number short enough to be a Java int without a range check but
#: the checksum and the opaque (checked by L{CommandParser._wholePut}).
#: Such a put whose body is already buffered is decoded without splitting
#: the line or going through the general decoders: the same command they
#: give (a property test checks it), for about a third of their work.
#: Anything else (a transaction key in place of the checksum, no checksum,
#: a plus sign, Unicode, a body still arriving, an error) takes the general
#: path.
_WHOLE_PUT = re.compile(
    rb"put ([\x21-\x7e]+) (-?[0-9]{1,9}) ([0-9]{1,9}) (-?[0-9]{1,9}) (-?[0-9]{1,10})"
    rb"(?: ([\x21-\x7e]+))? (-?[0-9]{1,10})"
)
_JAVA_INTS = range(-(2**31), 2**31)
_JAVA_LONGS = range(-(2**63), 2**63)

#: The same for a C{transaction} line as the Java producer sends it (5
#: tokens: key, session id, type, opaque; 6 for a BEGIN, the timeout before
#: the opaque): a one-message transaction sends two (BEGIN and COMMIT).
_WHOLE_TRANSACTION = re.compile(
    rb"transaction ([\x21-\x7e]+) ([\x21-\x7e]+) ([A-Z_]+)(?: ([0-9]{1,9}))? (-?[0-9]{1,10})"
)

#: The same for a C{sync} as a sync master sends it (8 tokens: topic,
#: partition, body length, flag, message id, checksum, opaque; the id and
#: the last two range-checked by L{CommandParser._wholeSync}): a sync slave
#: decodes one per replicated put.
_WHOLE_SYNC = re.compile(
    rb"sync ([\x21-\x7e]+) (-?[0-9]{1,9}) ([0-9]{1,9}) (-?[0-9]{1,9}) (-?[0-9]{1,19})"
    rb" (-?[0-9]{1,10}) (-?[0-9]{1,10})"
)


def _batchedSync(groups, body):
    """
    The sync of a header line that matched L{_WHOLE_SYNC} and its body, or
    L{None} when a number is out of its Java range.
    """
    topic, partition, length, flag, msgId, checksum, opaque = groups
    msgId = int(msgId)
    checksum = int(checksum)
    opaque = int(opaque)
    if msgId not in _JAVA_LONGS or checksum not in _JAVA_INTS or opaque not in _JAVA_INTS:
        return None
    return newSync(topic.decode("ascii"), int(partition), body, int(flag), msgId, opaque, checksum)


def _batchedPut(groups, body):
    """
    The plain put of a header line that matched L{_WHOLE_PUT} and its body,
    or L{None} when it is not one a L{PutBatch} takes (a transaction key,
    partition -1) or a number is out of its Java range.
    """
    topic, partition, length, flag, checksum, key, opaque = groups
    if key is not None or partition[0] == 45:  # "-"
        return None
    checksum = int(checksum)
    opaque = int(opaque)
    if checksum not in _JAVA_INTS or opaque not in _JAVA_INTS:
        return None
    return newPut(topic.decode("ascii"), int(partition), body, int(flag), opaque, checksum)


@dataclass(slots=True)
class _Waiting:
    """
    A header line decoded; its body is still arriving.
    """

    line: str
    tokens: list[str]
    body: _Body


class CommandParser:
    """
    An incremental decoder of a byte stream into commands.

    Input is kept in one C{bytearray}: appending is amortised linear, and
    consuming from its front is constant time in CPython, so a 1 MiB body
    arriving in small chunks costs a couple of copies, not one per chunk.
    The CRLF search resumes where the previous one stopped.

    After a L{ProtocolError} the parser is spent: every later call raises
    the same error (the connection is going away).

    @ivar maxBodySize: the largest body accepted; a larger declared length
        is a L{ProtocolError} (Java has no limit).
    @ivar maxLineLength: the longest header line accepted, CR LF excluded
        (Java has no limit either; this only bounds memory).
    @ivar syncBatches: whether two or more whole C{sync} commands in a row
        (as a sync master sends them, L{_WHOLE_SYNC}) that one L{parse} call
        completes come as one L{SyncBatch} rather than one by one.
    @ivar putBatches: the same for plain C{put} commands (L{PutBatch}).
    """

    def __init__(
        self,
        maxBodySize: int = DEFAULT_MAX_BODY_SIZE,
        maxLineLength: int = DEFAULT_MAX_LINE_LENGTH,
        syncBatches: bool = False,
        putBatches: bool = False,
    ):
        self.maxBodySize = maxBodySize
        self.maxLineLength = maxLineLength
        self.syncBatches = syncBatches
        self.putBatches = putBatches
        self._buffer = bytearray()
        self._scanned = 0
        self._waiting: _Waiting | None = None
        self._error: ProtocolError | None = None

    def feed(self, data: bytes) -> list:
        """
        Add C{data} and return every command it completes.

        @raise ProtocolError: at the first malformed command (the commands
            before it in the same call are lost with it; use L{parse} to
            act on each command as it is decoded).
        """
        return list(self.parse(data))

    def parse(self, data: bytes) -> Iterator:
        """
        Add C{data} and yield every command it completes, in order, raising
        L{ProtocolError} where a malformed one starts.
        """
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        buffer += data
        try:
            while True:
                if self._waiting is None:
                    end = buffer.find(b"\r\n", self._scanned)
                    if end < 0:
                        if len(buffer) > self.maxLineLength:
                            raise self._lineTooLong(buffer)
                        self._scanned = max(len(buffer) - 1, 0)
                        return
                    if end > self.maxLineLength:
                        raise self._lineTooLong(buffer)
                    fast = _FAST_PATHS.get(buffer[0])
                    if fast is not None:
                        pattern, whole = fast
                        match = pattern.fullmatch(buffer, 0, end)
                        if match is not None:
                            command = whole(self, buffer, end, match)
                            if command is not None:
                                yield command
                                continue
                    raw = buffer[:end]
                    del buffer[: end + 2]
                    self._scanned = 0
                    decoded = self._decodeLine(raw)
                    if not isinstance(decoded, _Waiting):
                        yield decoded
                        continue
                    self._waiting = decoded
                waiting = self._waiting
                length = waiting.body.length
                if len(buffer) < length:
                    return
                if length == len(buffer):
                    body = bytes(buffer)
                    buffer.clear()
                else:
                    with memoryview(buffer) as view:
                        body = bytes(view[:length])
                    del buffer[:length]
                self._waiting = None
                try:
                    command = waiting.body.finish(waiting.tokens, body)
                except ValueError as e:
                    raise _malformed(waiting.line, waiting.tokens, e)
                yield command
        except ProtocolError as error:
            self._error = error
            buffer.clear()
            self._waiting = None
            raise

    def _wholePut(self, buffer: bytearray, end: int, match) -> "PutCommand | None":
        """
        The put whose header line (C{buffer[:end]}) matched L{_WHOLE_PUT},
        taken from the buffer when its body is there too; else L{None},
        and the general path decodes it.
        """
        topic, partition, length, flag, checksum, key, opaque = match.groups()
        checksum = int(checksum)
        opaque = int(opaque)
        if checksum not in _JAVA_INTS or opaque not in _JAVA_INTS:
            return None
        if key is not None:
            try:
                key = canonicalKey(key.decode("ascii"))
            except ValueError:
                return None
        body = self._takeBody(buffer, end, int(length))
        if body is None:
            return None
        command = newPut(topic.decode("ascii"), int(partition), body, int(flag), opaque, checksum,
                         key)
        if self.putBatches and key is None and command.partition >= 0:
            return self._morePuts(buffer, command)
        return command

    def _wholeTransaction(self, buffer: bytearray, end: int,
                          match) -> "TransactionCommand | None":
        """
        The C{transaction} line (C{buffer[:end]}) that matched
        L{_WHOLE_TRANSACTION}, taken from the buffer when its type, key and
        opaque are valid; else L{None}, and the general path decodes it.
        """
        key, sessionId, kind, timeout, opaque = match.groups()
        kind = kind.decode("ascii")
        opaque = int(opaque)
        if kind not in TRANSACTION_TYPES or opaque not in _JAVA_INTS:
            return None
        try:
            key = canonicalKey(key.decode("ascii"))
        except ValueError:
            return None
        del buffer[: end + 2]
        self._scanned = 0
        return newTransaction(key, sessionId.decode("ascii"), kind, opaque,
                              0 if timeout is None else int(timeout))

    def _wholeSync(self, buffer: bytearray, end: int, match) -> "SyncCommand | None":
        """
        L{_wholePut} for a C{sync} whose header line matched L{_WHOLE_SYNC}
        (with L{syncBatches}, the whole syncs after it come with it).
        """
        topic, partition, length, flag, msgId, checksum, opaque = match.groups()
        msgId = int(msgId)
        checksum = int(checksum)
        opaque = int(opaque)
        if msgId not in _JAVA_LONGS or checksum not in _JAVA_INTS or opaque not in _JAVA_INTS:
            return None
        body = self._takeBody(buffer, end, int(length))
        if body is None:
            return None
        command = newSync(topic.decode("ascii"), int(partition), body, int(flag), msgId, opaque,
                          checksum)
        if self.syncBatches:
            return self._moreSyncs(buffer, command)
        return command

    def _moreSyncs(self, buffer: bytearray, first: SyncCommand) -> "SyncCommand | SyncBatch":
        """
        C{first} and the whole syncs that follow it in C{buffer}, taken
        from it: a L{SyncBatch} of them all, or C{first} alone.  What is
        not a whole sync (another command, a sync still arriving, a
        malformed one) is left to the general path.
        """
        syncs = self._moreWhole(buffer, first, _WHOLE_SYNC, _batchedSync)
        return first if len(syncs) == 1 else SyncBatch(syncs)

    def _morePuts(self, buffer: bytearray, first: PutCommand) -> "PutCommand | PutBatch":
        """
        C{first} and the whole plain puts that follow it in C{buffer}
        (L{PutBatch}), taken from it: a batch of them all, or C{first}
        alone.  What is not one (another command, a put still arriving, a
        put in a transaction or to partition -1, a malformed one) is left
        to the general path.
        """
        puts = self._moreWhole(buffer, first, _WHOLE_PUT, _batchedPut)
        return first if len(puts) == 1 else PutBatch(puts)

    def _moreWhole(self, buffer: bytearray, first, pattern, decode) -> list:
        """
        C{first} and the commands after it in C{buffer} whose header line
        matches C{pattern} whole (its third group the body's length) and
        whose body is there, each made by C{decode(groups, body)}, taken
        from the buffer; at the first that is not one (or that C{decode}
        refuses with L{None}) the rest is left to the general path.
        """
        commands = [first]
        start = 0
        size = len(buffer)
        find = buffer.find
        match = pattern.fullmatch
        maxLineLength = self.maxLineLength
        maxBodySize = self.maxBodySize
        while True:
            end = find(b"\r\n", start)
            if end < 0 or end - start > maxLineLength:
                break
            header = match(buffer, start, end)
            if header is None:
                break
            groups = header.groups()
            length = int(groups[2])
            stop = end + 2 + length
            if stop > size or length > maxBodySize:
                break
            command = decode(groups, bytes(buffer[end + 2:stop]))
            if command is None:
                break
            commands.append(command)
            start = stop
        if start:
            del buffer[:start]
        return commands

    def _takeBody(self, buffer: bytearray, end: int, length: int) -> "bytes | None":
        """
        Take the header line ending at C{end} and the C{length} bytes of
        body after it from C{buffer}, when they are all there and the body
        is not too large; else leave the buffer as it is: L{None}.
        """
        start = end + 2
        stop = start + length
        if stop > len(buffer) or length > self.maxBodySize:
            return None
        body = bytes(buffer[start:stop])
        del buffer[:stop]
        self._scanned = 0
        return body

    @property
    def bufferedBytes(self) -> int:
        """
        The bytes held of a command not yet complete: what one connection
        costs in memory until its sender finishes the request.
        """
        return len(self._buffer)

    def abandon(self, reason: str) -> ProtocolError:
        """
        Give up on the input: free what is buffered and spend the parser.

        @return: a L{ProtocolError} with C{reason} and the opaque of the
            request being received, when one could be read.
        """
        opaque = 0 if self._waiting is None else _salvageOpaque(self._waiting.tokens)
        self._error = ProtocolError(reason, opaque)
        self._buffer = bytearray()
        self._waiting = None
        return self._error

    def incompleteError(self) -> ProtocolError | None:
        """
        The error to report when the input ends now: L{None} when it ends
        between commands, else a L{ProtocolError} saying what is missing.
        """
        if self._error is not None:
            return None
        waiting = self._waiting
        if waiting is not None:
            return ProtocolError(
                f"Connection closed within command {waiting.line!r}: got "
                f"{len(self._buffer)} of {waiting.body.length} body bytes",
                _salvageOpaque(waiting.tokens),
            )
        if self._buffer:
            return ProtocolError(
                "Connection closed within an unterminated command line "
                f"{bytes(self._buffer[:200])!r} (lines end with CR LF)"
            )
        return None

    def _lineTooLong(self, buffer: bytearray) -> ProtocolError:
        return ProtocolError(
            f"Command line {bytes(buffer[:80])!r}... longer than "
            f"{self.maxLineLength} bytes"
        )

    def _decodeLine(self, raw: bytearray):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ProtocolError(
                f"Invalid command {bytes(raw)!r}: not UTF-8 ({e.reason})"
            )
        tokens = javaSplit(line)
        if not tokens or not tokens[0]:
            raise ProtocolError(f"Invalid command {line!r}: blank command word")
        decoder = _DECODERS.get(tokens[0][0])
        if decoder is None:
            raise ProtocolError(
                f'Invalid command {line!r}: unknown command "{tokens[0]}"'
            )
        try:
            decoded = decoder(tokens)
        except ValueError as e:
            raise _malformed(line, tokens, e)
        if isinstance(decoded, _Body):
            if decoded.length > self.maxBodySize:
                raise _malformed(
                    line, tokens,
                    f"body of {decoded.length} bytes exceeds the maximum of "
                    f"{self.maxBodySize}",
                )
            return _Waiting(line, tokens, decoded)
        return decoded


#: The decoders of the lines Java clients and a sync master send most, by
#: the line's first byte, each with the pattern its line must match whole;
#: any other line takes the general path.
_FAST_PATHS = {
    ord("p"): (_WHOLE_PUT, CommandParser._wholePut),
    ord("t"): (_WHOLE_TRANSACTION, CommandParser._wholeTransaction),
    ord("s"): (_WHOLE_SYNC, CommandParser._wholeSync),
}
