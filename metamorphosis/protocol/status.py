"""
The status codes of a MetaQ C{result} reply, in one place.

MetaQ borrows HTTP's numbers (the Java C{HttpStatus} class); this module
names the ones that go over the wire, with when a Java broker sends each,
so that the broker, the HA plugins, the client and the tools compare and
answer with names rather than bare numbers (as C{twisted.names.dns} does
for DNS response codes).
"""

__all__ = [
    "OK",
    "MOVED",
    "BAD_REQUEST",
    "UNAUTHORIZED",
    "FORBIDDEN",
    "NOT_FOUND",
    "INTERNAL_ERROR",
    "SERVICE_UNAVAILABLE",
    "GATEWAY_TIMEOUT",
]

#: A put or sync stored, an offset answered, a version, stats text, a
#: transaction operation that succeeded.
OK = 200

#: A C{get} must move: the offset is before the first segment, past the end
#: of data (when the broker is told to update consumer offsets), or
#: C{Long.MAX_VALUE}.  The body is the new offset in decimal.
MOVED = 301

#: A request the broker could not parse, or a C{get} with C{maxSize <= 0}.
BAD_REQUEST = 400

#: Never sent by the Java broker; this broker answers it to a request its
#: C{[access]} rules refuse (docs/security.md), because the Java client
#: reports it as an error with its text (a put fails with the text as its
#: error message, a get raises C{MetaClientException}), where a 403 would make
#: a consumer silently back off as if there were no data.
UNAUTHORIZED = 401

#: A put, get or sync on a closed partition, or a transactional put while
#: the broker is still replaying prepared transactions.
FORBIDDEN = 403

#: A get or offset on a partition with no store, or a get at or after the
#: end of data.
NOT_FOUND = 404

#: Every other failure of a put, get or transaction (unknown topic or
#: partition, checksum mismatch, I/O error, unknown transaction, an HA
#: slave that failed).
INTERNAL_ERROR = 500

#: No processor for the command (a C{sync} to a broker without a
#: synchronous-replication slave plugin).
SERVICE_UNAVAILABLE = 503

#: Never sent by a broker: the Java client makes up a local 504 reply for a
#: request that timed out.
GATEWAY_TIMEOUT = 504
