"""
The two kinds of failure a transaction command can answer with, spelled as the
Java broker spells them (spec/protocol.md section 6.7).
"""

# javax.transaction.xa.XAException error codes used by the broker.
XA_OK = 0
XA_RDONLY = 3
XAER_RMERR = -3
XAER_NOTA = -4
XAER_INVAL = -5
XAER_PROTO = -6
XAER_RMFAIL = -7
XA_RBOTHER = 104
XA_RBTIMEOUT = 106
XA_HEURHAZ = 8
XA_HEURCOM = 7
XA_HEURRB = 6


class XAException(Exception):
    """
    A failure with an XA error code; the broker answers it with
    C{XAException:code=<code>,msg=<message>}.
    """

    def __init__(self, code, message=None):
        Exception.__init__(self, code, message)
        self.code = code
        self.message = message

    def __str__(self):
        return self.message or ""

    def reply(self):
        """
        The body of the C{result 500} that reports this failure.
        """
        return "XAException:code=%d,msg=%s" % (
            self.code,
            "null" if self.message is None else self.message,
        )


class TransactionNotStarted(Exception):
    """
    A local transaction id that this connection has not begun (Java's
    C{MetamorphosisException}, answered with its bare message).
    """

    def __init__(self, key):
        Exception.__init__(self, "Local transaction '%s' has not been started." % (key,))


def xaNotStarted(key):
    return XAException(XAER_NOTA, "XA transaction '%s' has not been started." % (key,))
