"""
The exceptions the client raises (or errbacks with).

They mirror the Java client's: L{MetaClientError} is
C{MetaClientException}, L{MetaTimeoutError} is
C{MetaOpeartionTimeoutException}.  A reply the broker did send (a 500, a
403) is not an exception for a producer: it becomes a failed C{SendResult},
as in Java.
"""


class MetaClientError(Exception):
    """
    A request could not be made or answered: bad arguments, no partition or
    broker known for a topic, a closed factory.
    """


class MetaTimeoutError(MetaClientError):
    """
    No reply arrived within the request's timeout.  The broker is not told;
    a put that timed out may still have been stored.
    """


class MetaConnectionError(MetaClientError):
    """
    The connection to a broker is down (lost with the request in flight, or
    not re-established within the request's timeout).
    """


class UnavailablePartitionError(MetaClientError):
    """
    The partition an ordered selector chose is configured but cannot be
    written now (its broker is absent or unreachable); the Java client's
    C{AvailablePartitionNumException}.

    @ivar partition: the chosen L{Partition}.
    """

    def __init__(self, message, partition):
        MetaClientError.__init__(self, message)
        self.partition = partition
