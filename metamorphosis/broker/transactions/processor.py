"""
The broker's handling of C{transaction} commands and transactional C{put}s
(Java C{TransactionalCommandProcessor} and C{TransactionProcessor};
docs/protocol.md, docs/transactions.md).

Local transactions live in their connection's session context; XA
transactions live in one broker-wide map so that another connection,
typically a recovering transaction manager, can complete them, as far as the
access rules allow (docs/security.md).
"""

from twisted.application import service
from twisted.internet.defer import ensureDeferred, maybeDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from metamorphosis.broker.access import AccessDenied
from metamorphosis.broker.interfaces import ITransactionProcessor
from metamorphosis.broker.transactions.admin import (
    TransactionAdminService,
    adminSocketPath,
)
from metamorphosis.broker.transactions.journal import DEFAULT_FILE_SIZE, HeuristicJournal
from metamorphosis.broker.transactions.store import JournalTransactionStore
from metamorphosis.broker.transactions.transaction import (
    LocalTransaction,
    PendingMessage,
    State,
    XATransaction,
)
from metamorphosis.logfields import errorText
from metamorphosis.protocol.commands import ResultCommand, newResult
from metamorphosis.protocol.status import INTERNAL_ERROR, OK
from metamorphosis.protocol.txid import (
    LocalTransactionId,
    XATransactionId,
    parseTransactionId,
)
from metamorphosis.protocol.xa import (
    XA_HEURCOM,
    XA_HEURHAZ,
    XA_HEURRB,
    XAER_NOTA,
    XAER_RMERR,
    TransactionNotStarted,
    XAException,
    xaNotStarted,
)
from metamorphosis.ratelog import RateLimitedLog

_DEFAULT = object()

# The key of this processor's state in ISession.context.
_LOCAL_TRANSACTIONS = "metamorphosis.transactions.local"

_HEURISTIC_ERRORS = {
    State.HEURISTIC_COMMIT: (
        XA_HEURCOM, "XA transaction '%s' has been heuristically committed."),
    State.HEURISTIC_ROLLBACK: (
        XA_HEURRB, "XA transaction '%s' has been heuristically rolled back."),
    State.HEURISTIC_COMPLETE: (
        XA_HEURHAZ, "XA transaction '%s' has been heuristically completed."),
}


class TooManyTransactions(Exception):
    """
    A BEGIN refused: C{maxTxTimeoutTimerCapacity} transactions are open.
    """


class HeuristicTransaction:
    """
    A prepared XA transaction an operator completed by hand, remembered
    until the transaction manager FORGETs it.
    """

    __slots__ = ("key", "uniqueQualifier", "state")

    #: Nobody owns it: only the C{transactions} or C{admin} right may
    #: touch it.
    owner = None

    def __init__(self, key, uniqueQualifier, state):
        self.key = key
        self.uniqueQualifier = uniqueQualifier
        self.state = State(state)


@implementer(ITransactionProcessor)
class TransactionalProcessor(service.Service):
    """
    Transactions of one broker.

    Start it (it recovers the journal) after the message store manager and
    before the broker accepts connections; stop it before the store manager.

    @ivar xaTransactions: XA key to L{XATransaction}, in begin order.
    @ivar heuristicTransactions: XA key to L{HeuristicTransaction}.
    @ivar access: the broker's L{metamorphosis.broker.access.AccessGate},
        which says whose XA branches a session may touch; L{None} lets every
        session touch every branch (MetaQ's behaviour).
    """

    access = None

    log = Logger()
    refusals = RateLimitedLog(log)

    def __init__(
        self,
        config,
        storeManager,
        idWorker,
        stats,
        reactor=None,
        threadPool=None,
        journalFileSize=DEFAULT_FILE_SIZE,
        adminPath=_DEFAULT,
    ):
        if reactor is None:
            from twisted.internet import reactor
        if threadPool is None:
            threadPool = reactor.getThreadPool()
        self.config = config
        self.storeManager = storeManager
        self.idWorker = idWorker
        self.stats = stats
        self.reactor = reactor
        self._threadPool = threadPool
        self.store = JournalTransactionStore(
            config, storeManager, reactor, threadPool, journalFileSize
        )
        self._heuristicJournal = HeuristicJournal(self.store.directory)
        self.xaTransactions = {}
        self.heuristicTransactions = {}
        #: Transactions begun and not yet prepared or finished, each with
        #: its timeout armed (at most C{maxTxTimeoutTimerCapacity}).
        self.openTransactions = set()
        #: Bytes of message data held by unfinished transactions (at most
        #: C{maxTransactionBytes}).
        self.heldBytes = 0
        if adminPath is _DEFAULT:
            adminPath = adminSocketPath(config)
        self.admin = (
            None if adminPath is None else TransactionAdminService(self, adminPath, reactor)
        )

    # Lifetime

    def startService(self):
        """
        Recover the journal, then open the admin socket.

        @return: a Deferred that fires when transactions can be served.
        """
        service.Service.startService(self)
        return ensureDeferred(self._start())

    async def _start(self):
        await self._recover()
        if self.admin is not None:
            self.admin.startService()

    async def _recover(self):
        await self.store.open(self._adoptPrepared)
        for key, qualifier, state in await deferToThreadPool(
            self.reactor, self._threadPool, self._heuristicJournal.load
        ):
            self.heuristicTransactions[key] = HeuristicTransaction(key, qualifier, state)

    def _adoptPrepared(self, key, messages, location):
        xid = parseTransactionId(key)
        tx = XATransaction(xid.key, self.store, self._xaFinished, xid.uniqueQualifier)
        tx.messages = list(messages)
        tx.state = State.PREPARED
        self.xaTransactions[tx.key] = tx
        self._hold(tx, len(tx.key) + sum(len(m.data) for m in tx.messages))
        return tx

    def stopService(self):
        service.Service.stopService(self)
        return ensureDeferred(self._stop())

    async def _stop(self):
        if self.admin is not None and self.admin.running:
            await maybeDeferred(self.admin.stopService)
        for tx in list(self.xaTransactions.values()) + list(self.openTransactions):
            if tx.timeout is not None and tx.timeout.active():
                tx.timeout.cancel()
        await self.store.close()

    # The state machine's bookkeeping

    def _xaFinished(self, tx):
        if self.xaTransactions.get(tx.key) is tx:
            del self.xaTransactions[tx.key]
        self._release(tx)

    def _localFinished(self, transactions, tx):
        transactions.pop(tx.key, None)
        self._release(tx)

    def _hold(self, tx, count):
        tx.heldBytes += count
        self.heldBytes += count

    def _release(self, tx):
        """
        A transaction ended (or left memory): it holds no bytes and no
        timer slot any more.
        """
        self.openTransactions.discard(tx)
        self.heldBytes -= tx.heldBytes
        tx.heldBytes = 0

    def _localTransactions(self, session):
        return session.context.setdefault(_LOCAL_TRANSACTIONS, {})

    def _mayTouch(self, session, tx):
        return self.access is None or self.access.mayTouch(session, tx.owner)

    def _checkOwner(self, session, tx):
        if not self._mayTouch(session, tx):
            raise AccessDenied(f"XA transaction {tx.key} begun by another connection")

    def getTransaction(self, session, xid):
        """
        The live transaction C{xid} names, else the Java error for it.

        @raise AccessDenied: an XA branch the session may not touch.
        """
        if isinstance(xid, XATransactionId):
            tx = self.xaTransactions.get(xid.key)
            if tx is not None:
                self._checkOwner(session, tx)
                return tx
            heuristic = self.heuristicTransactions.get(xid.key)
            if heuristic is not None:
                self._checkOwner(session, heuristic)
                code, message = _HEURISTIC_ERRORS[heuristic.state]
                raise XAException(code, message % (xid.key,))
            raise xaNotStarted(xid.key)
        tx = self._localTransactions(session).get(xid.key)
        if tx is None:
            raise TransactionNotStarted(xid.key)
        return tx

    def beginTransaction(self, session, xid, timeout):
        """
        Begin C{xid}. Unlike Java, every transaction gets a timeout, at most
        C{maxTxTimeoutInSeconds} (which one without a timeout gets): a
        client that vanishes after BEGIN must not hold its messages for
        ever. At most C{maxTxTimeoutTimerCapacity} transactions are open
        (begun, not prepared or finished) at once.

        @raise XAException: (XA) too many open transactions.
        @raise TooManyTransactions: (local) too many open transactions.
        """
        if isinstance(xid, XATransactionId):
            self.stats.statsTxBegin(True)
            if xid.key in self.xaTransactions:
                self._checkOwner(session, self.xaTransactions[xid.key])
                return
            self._checkCapacity(xid)
            tx = XATransaction(xid.key, self.store, self._xaFinished, xid.uniqueQualifier)
            tx.owner = session
            self.xaTransactions[tx.key] = tx
        elif isinstance(xid, LocalTransactionId):
            self.stats.statsTxBegin(False)
            transactions = self._localTransactions(session)
            if xid.key in transactions:
                return
            self._checkCapacity(xid)
            tx = LocalTransaction(
                xid.key, self.store, lambda t: self._localFinished(transactions, t)
            )
            transactions[tx.key] = tx
        else:
            raise TransactionNotStarted(xid.key)
        # Its key is held as long as it is, and counted.
        self._hold(tx, len(tx.key))
        limit = self.config.maxTxTimeoutInSeconds
        self.openTransactions.add(tx)
        tx.timeout = self.reactor.callLater(
            min(timeout, limit) if timeout > 0 else limit,
            self._abandon,
            tx,
            "XA transaction {key} is timeout,it is rolled back.",
        )

    def _checkCapacity(self, xid):
        """
        Refuse a BEGIN past C{maxTxTimeoutTimerCapacity} open transactions,
        or whose key (up to a header line long) would take the bytes held
        past C{maxTransactionBytes}.
        """
        capacity = self.config.maxTxTimeoutTimerCapacity
        limit = self.config.maxTransactionBytes
        if len(self.openTransactions) >= capacity:
            kind = "tx-capacity"
            text = (f"Cannot begin {xid.key}: {capacity} transactions are open "
                    "(maxTxTimeoutTimerCapacity)")
        elif self.heldBytes + len(xid.key) > limit:
            kind = "tx-bytes"
            text = (f"Cannot begin {xid.key[:100]}: open transactions hold "
                    f"{self.heldBytes} bytes (maxTransactionBytes {limit})")
        else:
            return
        self.refusals.warn(kind, "{error}", error=text)
        if isinstance(xid, XATransactionId):
            raise XAException(XAER_RMERR, text)
        raise TooManyTransactions(text)

    def _abandon(self, tx, why):
        d = tx.abandon()
        if d is not None:
            self.log.warn(why, key=tx.key)
            d.addErrback(
                lambda f: self.log.failure("Rolling back {key} failed", f, key=tx.key)
            )

    def preparedTransactions(self, uniqueQualifier, session=None):
        """
        The keys RECOVER answers: prepared XA transactions, then the
        heuristically completed ones, of the qualifier (all without one),
        that C{session} may touch (all without one).
        """
        def matches(tx):
            return (uniqueQualifier is None or tx.uniqueQualifier == uniqueQualifier) and (
                session is None or self._mayTouch(session, tx))

        prepared = [
            tx.key
            for tx in self.xaTransactions.values()
            if tx.state == State.PREPARED and matches(tx)
        ]
        # A heuristically completed transaction is prepared again after a
        # restart (its journal records stay): list it once.
        return prepared + [
            tx.key
            for tx in self.heuristicTransactions.values()
            if matches(tx) and tx.key not in prepared
        ]

    async def forgetTransaction(self, xid, session=None):
        if not isinstance(xid, XATransactionId):
            raise XAException(XAER_NOTA, "%s is not a valid xid" % (xid.key,))
        heuristic = self.heuristicTransactions.get(xid.key)
        if heuristic is not None and session is not None:
            self._checkOwner(session, heuristic)
        return await self._forget(xid.key)

    async def _forget(self, key):
        if self.heuristicTransactions.pop(key, None) is None:
            return False
        await self._saveHeuristics()
        return True

    # ITransactionProcessor

    def processTransaction(self, command, session):
        kind = command.type
        if kind == "END":
            return None
        if kind == "BEGIN":
            # Nothing to wait for: answered at once, without a coroutine
            # (one of the three requests of a one-message transaction).
            try:
                self.beginTransaction(
                    session, parseTransactionId(command.transactionKey), command.timeout)
            except Exception as e:
                return self._refusal(e, command, session)
            return newResult(OK, b"", command.opaque)
        return ensureDeferred(self._processTransaction(command, session))

    async def _processTransaction(self, command, session):
        kind = command.type
        body = ""
        try:
            xid = parseTransactionId(command.transactionKey)
            if kind == "PREPARE":
                tx = self.getTransaction(session, xid)
                body = str(await tx.prepare())
                if tx.state == State.PREPARED:
                    # Prepared transactions never time out (they wait for
                    # their transaction manager) and leave the timer slots.
                    self.openTransactions.discard(tx)
                    if tx.timeout is not None and tx.timeout.active():
                        tx.timeout.cancel()
                    tx.timeout = None
            elif kind in ("COMMIT_ONE_PHASE", "COMMIT_TWO_PHASE"):
                self.stats.statsTxCommit()
                await self.getTransaction(session, xid).commit(kind == "COMMIT_ONE_PHASE")
            elif kind == "ROLLBACK":
                self.stats.statsTxRollback()
                await self.getTransaction(session, xid).rollback()
            elif kind == "FORGET":
                await self.forgetTransaction(xid, session)
            elif kind == "RECOVER":
                body = "\r\n".join(
                    self.preparedTransactions(command.uniqueQualifier, session))
            else:
                body = "Unknow transaction command type:%s" % (kind,)
                return ResultCommand(INTERNAL_ERROR, body.encode("utf-8"), command.opaque)
        except Exception as e:
            return self._refusal(e, command, session)
        return newResult(OK, body.encode("utf-8"), command.opaque)

    def _refusal(self, error, command, session):
        """
        The reply to a transaction command that raised C{error} (called in
        its C{except} clause).
        """
        if isinstance(error, AccessDenied):
            return self.access.refuse(session, "transactions", str(error), command.opaque,
                                      xa=True)
        if isinstance(error, XAException):
            self.refusals.info(
                "xa-refused:%s" % (command.type,),
                "Transaction command {command} {key} failed: {error}",
                command=command.type,
                key=command.transactionKey,
                error=errorText(error.reply()),
            )
            return ResultCommand(INTERNAL_ERROR, error.reply().encode("utf-8"), command.opaque)
        if not isinstance(error, (TransactionNotStarted, TooManyTransactions, ValueError)):
            self.log.failure("Processing transaction command failed")
        return ResultCommand(INTERNAL_ERROR, str(error).encode("utf-8"), command.opaque)

    def processPut(self, command, session):
        key = command.transactionKey
        try:
            # Keys as clients send them are already in canonical form: look
            # them up before parsing.
            tx = self.xaTransactions.get(key) or self._localTransactions(session).get(key)
            if tx is None:
                tx = self.getTransaction(session, parseTransactionId(key))
            elif tx.isXA:
                self._checkOwner(session, tx)
            if tx.state == State.START:
                tx.state = State.IN_USE
            size = len(command.data)
            if self.heldBytes + size > self.config.maxTransactionBytes:
                text = (f"Open transactions hold {self.heldBytes} bytes; a put of {size} "
                        f"more would pass maxTransactionBytes "
                        f"({self.config.maxTransactionBytes})")
                self.refusals.warn("tx-bytes", "Refused a put to {key}: {error}",
                                   key=key, error=text)
                return ResultCommand(INTERNAL_ERROR, text.encode("utf-8"), command.opaque)
            partitionString = "%d-%d" % (self.config.brokerId, command.partition)
            if command.partition == -1:
                self.stats.statsPutFailed(command.topic, partitionString)
                raise ValueError(
                    "Invalid partition for transaction command:%d" % (command.partition,)
                )
            self.storeManager.storeFor(command.topic, command.partition)
            msgId = self.idWorker.nextId()
            tx.addMessage(
                PendingMessage(
                    msgId, command.topic, command.partition, command.flag, command.data
                )
            )
            self._hold(tx, size)
        except AccessDenied as e:
            return self.access.refuse(session, "transactions", str(e), command.opaque,
                                      xa=True)
        except Exception as e:
            if isinstance(e, OSError):
                self.refusals.error("tx-put-failed", "Journaling a put of {key} failed: {error}",
                                    key=key, error=str(e))
            return ResultCommand(INTERNAL_ERROR, str(e).encode("utf-8"), command.opaque)
        self.stats.statsPut(command.topic, partitionString)
        return newResult(OK, b"%d %d -1" % (msgId, command.partition), command.opaque)

    def sessionClosed(self, session):
        """
        Roll back the local transactions of a closed connection: no other
        connection can ever complete them (Java leaves them to their timeout
        or the next restart, which has the same visible outcome).
        """
        for tx in list(self._localTransactions(session).values()):
            self._abandon(
                tx, "Local transaction {key} of a closed connection is rolled back."
            )

    # Heuristic completion (operator commands, see admin.py)

    async def _saveHeuristics(self):
        entries = [
            (h.key, h.uniqueQualifier, h.state) for h in self.heuristicTransactions.values()
        ]
        await deferToThreadPool(
            self.reactor, self._threadPool, self._heuristicJournal.save, entries
        )

    def _preparedTransaction(self, key):
        try:
            xid = parseTransactionId(key)
        except ValueError:
            return None
        tx = self.xaTransactions.get(xid.key) if isinstance(xid, XATransactionId) else None
        return tx if tx is not None and tx.state == State.PREPARED else None

    async def _completeHeuristically(self, key, state, action):
        tx = self._preparedTransaction(key)
        if tx is None:
            return False
        await action(tx)
        self.heuristicTransactions[tx.key] = HeuristicTransaction(
            tx.key, tx.uniqueQualifier, state
        )
        await self._saveHeuristics()
        self.log.warn("Prepared transaction {key} completed heuristically: {state}",
                      key=tx.key, state=state.name)
        return True

    def commitHeuristically(self, key, onePhase=False):
        """
        Commit the prepared XA transaction C{key} by operator decision.

        @return: Deferred firing with whether there was such a transaction.
        """
        return ensureDeferred(
            self._completeHeuristically(
                key, State.HEURISTIC_COMMIT, lambda tx: tx.commit(onePhase)
            )
        )

    def rollbackHeuristically(self, key):
        return ensureDeferred(
            self._completeHeuristically(
                key, State.HEURISTIC_ROLLBACK, lambda tx: tx.rollback()
            )
        )

    def forgetHeuristic(self, key):
        """
        Drop the memory of the heuristically completed transaction C{key}
        (what FORGET does).

        @return: Deferred firing with whether it was remembered.
        """
        try:
            key = parseTransactionId(key).key
        except ValueError:
            pass
        return ensureDeferred(self._forget(key))

    def completeHeuristically(self, key):
        """
        Forget the prepared XA transaction C{key} without committing or
        rolling it back; its journal records stay, so it is prepared again
        after a restart (as in Java).
        """
        async def detach(tx):
            del self.xaTransactions[tx.key]
            self._release(tx)

        return ensureDeferred(
            self._completeHeuristically(key, State.HEURISTIC_COMPLETE, detach)
        )
