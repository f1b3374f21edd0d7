"""
The operator's door to prepared XA transactions: heuristic completion (Java
exposes it through JMX, C{TransactionalCommandProcessorMBean}).

The broker listens for L{amp} on a UNIX socket, C{admin.sock} in the
transaction journal directory, readable only by the broker's user: whoever
may touch the journal may complete its transactions, and the MetaQ wire
protocol stays as it is.  C{metamorphosis.tools.txadmin} is the client.
"""

import os

from twisted.application import service
from twisted.internet import protocol
from twisted.logger import Logger
from twisted.protocols import amp

from metamorphosis.broker.transactions.transaction import State
from metamorphosis.logfields import errorText

SOCKET_NAME = "admin.sock"


def adminSocketPath(config):
    """
    Where the broker of C{config} listens for transaction admin commands.
    """
    return os.path.join(config.transactionDataPath, "transactions", SOCKET_NAME)


class ListTransactions(amp.Command):
    """
    The prepared XA transactions, and the heuristically completed ones as
    C{"<key> <STATE>"}.
    """

    arguments = []
    response = [
        (b"prepared", amp.ListOf(amp.Unicode())),
        (b"heuristic", amp.ListOf(amp.Unicode())),
    ]


class _KeyCommand(amp.Command):
    arguments = [(b"key", amp.Unicode())]
    response = [(b"done", amp.Boolean())]


class CommitTransaction(_KeyCommand):
    """
    Commit a prepared transaction heuristically.
    """

    arguments = [(b"key", amp.Unicode()), (b"onePhase", amp.Boolean(optional=True))]


class RollbackTransaction(_KeyCommand):
    """
    Roll back a prepared transaction heuristically.
    """


class CompleteTransaction(_KeyCommand):
    """
    Forget a prepared transaction without committing or rolling it back.
    """


class ForgetTransaction(_KeyCommand):
    """
    Drop the memory of a heuristically completed transaction.
    """


class TransactionAdmin(amp.AMP):
    """
    Answers the admin commands with the broker's L{TransactionalProcessor}.
    """

    def __init__(self, processor):
        amp.AMP.__init__(self)
        self.processor = processor

    @ListTransactions.responder
    def listTransactions(self):
        return {
            "prepared": [
                tx.key for tx in self.processor.xaTransactions.values()
                if tx.state == State.PREPARED
            ],
            "heuristic": [
                "%s %s" % (h.key, h.state.name)
                for h in self.processor.heuristicTransactions.values()
            ],
        }

    @CommitTransaction.responder
    def commit(self, key, onePhase=False):
        return self.processor.commitHeuristically(key, onePhase).addCallback(
            lambda done: {"done": done}
        )

    @RollbackTransaction.responder
    def rollback(self, key):
        return self.processor.rollbackHeuristically(key).addCallback(
            lambda done: {"done": done}
        )

    @CompleteTransaction.responder
    def complete(self, key):
        return self.processor.completeHeuristically(key).addCallback(
            lambda done: {"done": done}
        )

    @ForgetTransaction.responder
    def forget(self, key):
        return self.processor.forgetHeuristic(key).addCallback(
            lambda done: {"done": done}
        )


class TransactionAdminService(service.Service):
    """
    Listens on the admin socket while the broker runs.
    """

    log = Logger()

    def __init__(self, processor, path, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.processor = processor
        self.path = path
        self._reactor = reactor
        self._port = None

    def startService(self):
        service.Service.startService(self)
        factory = protocol.Factory.forProtocol(lambda: TransactionAdmin(self.processor))
        factory.noisy = False
        try:
            self._port = self._reactor.listenUNIX(
                self.path, factory, mode=0o600, wantPID=True
            )
        except Exception as e:
            self.log.warn(
                "Transaction admin socket {path} unavailable ({error}); heuristic "
                "completion is disabled",
                path=self.path,
                error=errorText(e),
            )

    def stopService(self):
        service.Service.stopService(self)
        if self._port is not None:
            port, self._port = self._port, None
            return port.stopListening()
