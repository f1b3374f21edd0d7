"""
Transactions on a replicating broker: there are none
(docs/transactions.md).

The Java samsa master and gregor slave replace the broker's processor chain
by one without transaction support: every C{transaction} command is refused
with C{Unsupported <method>} (the name of the Java method that threw), and a
put carrying a transaction key is stored (and replicated) at once as a
plain put, the key ignored.
"""

from zope.interface import implementer

from metamorphosis.broker.interfaces import ITransactionProcessor
from metamorphosis.protocol.commands import ResultCommand
from metamorphosis.protocol.status import INTERNAL_ERROR

#: Transaction type to the Java C{CommandProcessor} method it calls.
_METHODS = {
    "BEGIN": "beginTransaction",
    "PREPARE": "prepareTransaction",
    "COMMIT_ONE_PHASE": "commitTransaction",
    "COMMIT_TWO_PHASE": "commitTransaction",
    "FORGET": "forgetTransaction",
    "ROLLBACK": "rollbackTransaction",
    "RECOVER": "getPreparedTransactions",
}


@implementer(ITransactionProcessor)
class NoTransactions:
    """
    @param processPut: the mode's plain put handler, C{(command, session)}
        to a reply.
    """

    def __init__(self, processPut):
        self._processPut = processPut

    def processTransaction(self, command, session):
        if command.type == "END":
            return None
        method = _METHODS.get(command.type)
        if method is None:
            text = "Unknow transaction command type:%s" % (command.type,)
        else:
            text = "Unsupported " + method
        return ResultCommand(INTERNAL_ERROR, text.encode("utf-8"), command.opaque)

    def processPut(self, command, session):
        return self._processPut(command, session)

    def sessionClosed(self, session):
        pass
