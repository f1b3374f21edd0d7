"""
The XA vocabulary of the wire: C{javax.transaction.xa} error codes and flags,
and the two kinds of failure a C{transaction} command is answered with,
spelled as the Java broker spells them (docs/protocol.md).
"""

import re

# javax.transaction.xa.XAException error codes used by the broker.
XA_OK = 0
XA_RDONLY = 3
XAER_RMERR = -3
XAER_NOTA = -4
XAER_INVAL = -5
XAER_PROTO = -6
XAER_RMFAIL = -7
XAER_DUPID = -8
XA_RBOTHER = 104
XA_RBTIMEOUT = 106
XA_HEURHAZ = 8
XA_HEURCOM = 7
XA_HEURRB = 6


# XAResource flags.
TMNOFLAGS = 0
TMENDRSCAN = 0x00800000
TMFAIL = 0x20000000
TMJOIN = 0x00200000
TMONEPHASE = 0x40000000
TMRESUME = 0x08000000
TMSTARTRSCAN = 0x01000000
TMSUCCESS = 0x04000000
TMSUSPEND = 0x02000000

_REPLY = re.compile(r"code=(-?\d+),msg=(.*)", re.DOTALL)


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

    @classmethod
    def fromReply(cls, text):
        """
        The exception an error reply reports, as the Java client reads it
        (C{TransactionContext.syncSendXATxCommand}): the code of an
        C{XAException:code=…} text, else XAER_RMERR.
        """
        match = _REPLY.search(text)
        if match is None:
            return cls(XAER_RMERR, text)
        message = match.group(2)
        return cls(int(match.group(1)), None if message == "null" else message)


class TransactionNotStarted(Exception):
    """
    A local transaction id that this connection has not begun (Java's
    C{MetamorphosisException}, answered with its bare message).
    """

    def __init__(self, key):
        Exception.__init__(self, "Local transaction '%s' has not been started." % (key,))


def xaNotStarted(key):
    return XAException(XAER_NOTA, "XA transaction '%s' has not been started." % (key,))
