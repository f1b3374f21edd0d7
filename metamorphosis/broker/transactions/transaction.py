"""
The state machine of one transaction (Java C{Transaction}, C{LocalTransaction}
and C{XATransaction}; docs/transactions.md).

A transaction only decides which transition a request makes and what it
answers; making a transition durable is the job of the transaction store it
is given (L{metamorphosis.broker.transactions.store.JournalTransactionStore}),
whose C{prepare}, C{commit} and C{rollback} return Deferreds.
"""

import enum
from dataclasses import dataclass

from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger

from metamorphosis.protocol.xa import (
    XA_OK,
    XA_RBOTHER,
    XA_RDONLY,
    XAER_PROTO,
    XAER_RMERR,
    XAException,
)


class State(enum.IntEnum):
    """
    The Java state numbers (C{Transaction.*_STATE}).
    """

    START = 0
    IN_USE = 1
    PREPARED = 2
    FINISHED = 3
    HEURISTIC_COMMIT = 4
    HEURISTIC_ROLLBACK = 5
    HEURISTIC_COMPLETE = 6


@dataclass(frozen=True, slots=True)
class PendingMessage:
    """
    A put of a transaction: journaled and given its id at put time, appended
    to its partition only at commit.
    """

    msgId: int
    topic: str
    partition: int
    flag: int
    data: bytes


class Transaction:
    """
    What local and XA transactions share.

    @ivar key: the transaction key as on the wire (C{TX:…} or C{XID:…}).
    @ivar messages: the L{PendingMessage}s, in put order.
    @ivar location: where the journal holds this transaction's first record,
        L{None} before its first put; the store keeps it.
    @ivar timeout: the L{IDelayedCall} that rolls it back when abandoned.
    """

    isXA = False
    log = Logger()

    def __init__(self, key, store, onFinished):
        self.key = key
        self.state = State.START
        self.messages = []
        self.location = None
        self.timeout = None
        #: Message bytes the broker's bound on open transactions counts.
        self.heldBytes = 0
        self.preparing = False
        self._abandoned = False
        self._store = store
        self._onFinished = onFinished

    def __repr__(self):
        return "<%s %s %s>" % (type(self).__name__, self.key, self.state.name)

    @property
    def uniqueQualifier(self):
        return None

    def addMessage(self, message):
        """
        Journal a put and keep it for the commit.

        @raise XAException: a PREPARE is being journaled: the put would be
            missing from the prepared transaction.
        """
        if self.preparing:
            raise XAException(XAER_PROTO, "Cannot add a message while prepare is in progress.")
        if self.state == State.START:
            self.state = State.IN_USE
        # Journal first: a put the journal refused (a full disk) is
        # answered with an error and must not be committed later.
        self._store.addMessage(self, message)
        self.messages.append(message)

    def _finish(self):
        self.state = State.FINISHED
        if self.timeout is not None and self.timeout.active():
            self.timeout.cancel()
        self.timeout = None
        self._onFinished(self)

    def _checkPrePrepare(self):
        if self.state not in (State.START, State.IN_USE):
            raise XAException(XAER_PROTO, "Prepare cannot be called now.")

    async def _storeCommit(self, wasPrepared, failure):
        try:
            await self._store.commit(self, wasPrepared)
        except Exception:
            self.log.failure("Store COMMIT FAILED for {key}", key=self.key)
            await self.rollback()
            raise XAException(XA_RBOTHER, failure)

    def abandon(self):
        """
        Roll back unless prepared or finished: the timeout armed at BEGIN
        fired (Java C{TransactionalCommandProcessor.setTxTimeout}), or the
        connection that alone could complete a local transaction is gone.

        @return: a Deferred if it rolls back, else L{None}.
        """
        self.timeout = None
        if self.preparing:
            # Decided when the journal write ends: prepared, or rolled back.
            self._abandoned = True
            return None
        if self.state in (State.START, State.IN_USE):
            return ensureDeferred(self.rollback())
        return None


class LocalTransaction(Transaction):
    """
    A local transaction (C{TX:…}), held in its connection's session context.
    """

    async def prepare(self):
        raise XAException(XAER_RMERR, "Prepare not implemented on Local Transactions.")

    async def commit(self, onePhase):
        self._checkPrePrepare()
        self._finish()
        await self._storeCommit(False, "STORE COMMIT FAILED: Transaction rolled back.")

    async def rollback(self):
        self._finish()
        await self._store.rollback(self)


class XATransaction(Transaction):
    """
    An XA transaction (C{XID:…}), held broker-wide so that a recovering
    transaction manager can complete it from another connection.

    @ivar owner: the session that began it, L{None} when it was recovered
        from the journal (the access rules decide who else may touch it).
    """

    isXA = True
    owner = None

    def __init__(self, key, store, onFinished, uniqueQualifier):
        Transaction.__init__(self, key, store, onFinished)
        self._uniqueQualifier = uniqueQualifier

    @property
    def uniqueQualifier(self):
        return self._uniqueQualifier

    async def prepare(self):
        """
        Journal the PREPARE, and only once it is written (and forced when
        the flush policy asks for it) become prepared.  When the journal
        cannot be written (a full disk) the transaction stays in use and
        the client gets an XA error: RECOVER does not list it, a COMMIT
        does not deliver it, and the PREPARE may be retried.
        """
        if self.state == State.START:
            self._finish()
            return XA_RDONLY
        if self.state != State.IN_USE or self.preparing:
            raise XAException(XAER_PROTO, "Cannot call prepare now.")
        self.preparing = True
        try:
            await self._store.prepare(self)
        except Exception as e:
            self.log.warn(
                "Prepare of {key} failed, the transaction journal could not be "
                "written: {error}", key=self.key, error=str(e),
            )
            if self.state == State.IN_USE and self._abandoned:
                # It was abandoned while the journal was written: nothing
                # else would end it.
                await self.rollback()
            raise XAException(
                XAER_RMERR,
                "Prepare failed, the transaction journal could not be written: %s" % (e,),
            )
        finally:
            self.preparing = False
        if self.state != State.IN_USE:
            raise XAException(XAER_PROTO, "The transaction ended while it was prepared.")
        self.state = State.PREPARED
        if self.timeout is not None and self.timeout.active():
            self.timeout.cancel()
        self.timeout = None
        return XA_OK

    async def commit(self, onePhase):
        if self.preparing:
            raise XAException(XAER_PROTO, "Cannot call commit while prepare is in progress.")
        if self.state in (State.START, State.IN_USE):
            if not onePhase:
                raise XAException(
                    XAER_PROTO,
                    "Cannot do 2 phase commit if the transaction has not been prepared.",
                )
            wasPrepared = False
        elif self.state == State.PREPARED:
            wasPrepared = True
        else:
            raise XAException(XAER_PROTO, "Cannot call commit now.")
        hasWork = self.state != State.START
        self._finish()
        if hasWork:
            await self._storeCommit(
                wasPrepared, "STORE COMMIT FAILED: Transaction rolled back."
            )

    async def rollback(self):
        if self.state == State.START:
            self._finish()
        elif self.state in (State.IN_USE, State.PREPARED):
            self._finish()
            await self._store.rollback(self)
        elif self.state == State.FINISHED:
            await self._store.rollback(self)
        else:
            raise XAException(0, "Invalid state")
