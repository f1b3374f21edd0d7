"""
Transaction identifiers as they travel in C{put} and C{transaction} lines.

A key is C{TX:<sessionId>:<value>} (a local transaction), C{XID:<formatId>:
<hex gtrid>:<hex bqual>:<uniqueQualifier>} (an XA branch) or the literal
C{null} (the id of a C{RECOVER} request).  Parsing follows the Java
C{TransactionId.valueOf} family exactly (docs/protocol.md), including
its oddities, because the key is what the broker files transactions under:

  - a local key splits on C{:} with Java's trailing-empty-token dropping and
    must give exactly 3 parts, so C{TX:s:1:} is C{TX:s:1} and C{TX:s:} is
    illegal; the value is read with C{Integer.parseInt} although it is a
    long;
  - an XA key splits keeping empty parts and must give exactly 5 parts; each
    pair of hex digits is read with C{Integer.parseInt(pair, 16)} (either
    case, even a sign), an odd trailing digit is ignored.

The C{key} property always gives the canonical form the Java
C{getTransactionKey} would write (decimal numbers, lower-case hex), which is
the form Java clients send.
"""

from dataclasses import dataclass
from functools import lru_cache

from metamorphosis.protocol.javalang import parseJavaInt

__all__ = [
    "LocalTransactionId",
    "XATransactionId",
    "NullTransactionId",
    "NULL_TRANSACTION_ID",
    "canonicalKey",
    "parseTransactionId",
]


@dataclass(frozen=True, slots=True)
class LocalTransactionId:
    """
    A producer-local transaction: C{TX:<sessionId>:<value>}.
    """

    sessionId: str
    value: int

    @property
    def key(self) -> str:
        return f"TX:{self.sessionId}:{self.value}"


@dataclass(frozen=True, slots=True)
class XATransactionId:
    """
    An XA branch; equality includes the resource's unique qualifier, as in
    Java.
    """

    formatId: int
    globalTransactionId: bytes
    branchQualifier: bytes
    uniqueQualifier: str

    @property
    def key(self) -> str:
        return (
            f"XID:{self.formatId}:{self.globalTransactionId.hex()}:"
            f"{self.branchQualifier.hex()}:{self.uniqueQualifier}"
        )


@dataclass(frozen=True, slots=True)
class NullTransactionId:
    """
    The absent transaction, written C{null} (used by C{RECOVER}).
    """

    @property
    def key(self) -> str:
        return "null"


NULL_TRANSACTION_ID = NullTransactionId()


def _javaSplitColon(key: str) -> list[str]:
    """
    C{Pattern.compile(":").split(key)}: trailing empty parts are dropped.
    """
    parts = key.split(":")
    while parts and not parts[-1]:
        parts.pop()
    return parts


def _hexToBytes(text: str) -> bytes:
    """
    C{HexSupport.toBytesFromHex}: every full pair through
    C{Integer.parseInt(pair, 16)}, truncated to a byte.
    """
    return bytes(
        parseJavaInt(text[i : i + 2], radix=16) & 0xFF
        for i in range(0, len(text) - 1, 2)
    )


#: Keys up to this long are remembered by L{parseTransactionId} and
#: L{canonicalKey}, the last L{_REMEMBERED_KEYS} of them: a one-message
#: local transaction names its key in three requests (BEGIN, the put,
#: COMMIT) and the broker reads it five times, so remembering saves four
#: parses of five.  The bound keeps what a client sending long or ever new
#: keys can make the broker hold under a megabyte.
_REMEMBERED_KEY_LENGTH = 512
_REMEMBERED_KEYS = 1024


def parseTransactionId(
    key: str,
) -> LocalTransactionId | XATransactionId | NullTransactionId:
    """
    Parse a transaction key as C{TransactionId.valueOf} does.  The ids are
    immutable: the same key may give the same object.

    @raise ValueError: C{Illegal transaction key:<key>} for anything Java
        rejects.
    """
    if len(key) <= _REMEMBERED_KEY_LENGTH:
        return _parseRemembered(key)
    return _parse(key)


def canonicalKey(key: str) -> str:
    """
    C{parseTransactionId(key).key}: the form Java's C{getTransactionKey}
    writes, under which the broker files the transaction.

    @raise ValueError: as L{parseTransactionId}.
    """
    if len(key) <= _REMEMBERED_KEY_LENGTH:
        return _canonicalRemembered(key)
    return _parse(key).key


def _parse(key):
    try:
        if key == "null":
            return NULL_TRANSACTION_ID
        if key.startswith("XID:"):
            parts = key.split(":")
            if len(parts) == 5:
                return XATransactionId(
                    parseJavaInt(parts[1]),
                    _hexToBytes(parts[2]),
                    _hexToBytes(parts[3]),
                    parts[4],
                )
        elif key.startswith("TX:"):
            parts = _javaSplitColon(key)
            if len(parts) == 3:
                return LocalTransactionId(parts[1], parseJavaInt(parts[2]))
    except ValueError:
        pass
    raise ValueError(f"Illegal transaction key:{key}")


_parseRemembered = lru_cache(maxsize=_REMEMBERED_KEYS)(_parse)


@lru_cache(maxsize=_REMEMBERED_KEYS)
def _canonicalRemembered(key):
    # Through the remembered parse: a key as Java clients send it is
    # already canonical, so the parse of the broker's later lookups is
    # this one.
    return _parseRemembered(key).key
