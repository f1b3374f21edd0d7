"""
Transactions on the client: local transactions of a producer and the XA
resource a transaction manager drives (Java C{TransactionContext},
C{SimpleMessageProducer}'s transaction methods, C{SimpleXAMessageProducer};
docs/transactions.md).

A local transaction::

    producer = sessionFactory.createProducer()
    await producer.publish("topic")
    producer.beginTransaction()
    await producer.sendMessage(Message("topic", b"one"))
    await producer.sendMessage(Message("topic", b"two"))
    await producer.commit()          # or rollback()

As in Java, nothing is sent at C{beginTransaction}: the first message picks
the broker, the transaction is begun there, and every later message of the
transaction goes to a partition of that same broker.  An XA branch::

    producer = sessionFactory.createXAProducer()
    await producer.publish("topic")
    resource = producer.getXAResource()
    await resource.start(xid, TMNOFLAGS)
    await producer.sendMessage(...)
    await resource.end(xid, TMSUCCESS)
    if await resource.prepare(xid) == XA_OK:
        await resource.commit(xid, False)

Every method that talks to the broker returns a Deferred;
L{metamorphosis.client.blocking} has the blocking forms.
"""

import itertools
import os
import random
import socket
import time
from dataclasses import dataclass

from twisted.internet import defer
from twisted.logger import Logger

from metamorphosis.client.errors import (
    MetaClientError,
    MetaConnectionError,
    MetaTimeoutError,
)
from metamorphosis.client.producer import MessageProducer
from metamorphosis.logfields import errorText
from metamorphosis.protocol import records
from metamorphosis.protocol.status import OK
from metamorphosis.protocol.txid import XATransactionId, parseTransactionId
from metamorphosis.protocol.xa import (
    TMJOIN,
    TMRESUME,
    XA_RBTIMEOUT,
    XAER_DUPID,
    XAER_NOTA,
    XAER_PROTO,
    XAER_RMFAIL,
    XAException,
)

DEFAULT_REQUEST_TIMEOUT = 5.0

_sessionCounter = itertools.count(1)
_sessionEpoch = int(time.time() * 1000)


def _localAddress():
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def generateSessionId():
    """
    A producer session id as Java's C{IdGenerator.generateId}:
    C{<local-ip>-<millis at start>-<n>}.
    """
    return "%s-%d-%d" % (_localAddress(), _sessionEpoch, next(_sessionCounter))


class TransactionInProgress(MetaClientError):
    """
    A local transaction was asked for while an XA transaction is active, or
    the other way round.
    """


@dataclass(frozen=True)
class Xid:
    """
    A C{javax.transaction.xa.Xid}: what a transaction manager names a
    branch with.
    """

    formatId: int
    globalTransactionId: bytes
    branchQualifier: bytes

    def key(self, uniqueQualifier):
        """
        The wire key of this branch at the resource C{uniqueQualifier}.
        """
        return XATransactionId(
            self.formatId, self.globalTransactionId, self.branchQualifier, uniqueQualifier
        ).key

    @classmethod
    def fromKey(cls, key):
        xid = parseTransactionId(key)
        if not isinstance(xid, XATransactionId):
            raise ValueError("Not an XA transaction key: %s" % (key,))
        return cls(xid.formatId, xid.globalTransactionId, xid.branchQualifier)


class TransactionContext:
    """
    The transaction state of one producer with one broker: the current
    transaction key, the broker it was begun on, and the requests.

    @ivar transactionTimeout: seconds, sent with BEGIN when > 0.
    """

    log = Logger()

    def __init__(self, sessionId, uniqueQualifier=None):
        self.sessionId = sessionId
        self.uniqueQualifier = uniqueQualifier
        self.transactionTimeout = 0
        self.requestTimeout = DEFAULT_REQUEST_TIMEOUT
        self._localCounter = itertools.count(1)
        self.localActive = False
        self.key = None
        self.xid = None
        self.connection = None

    @property
    def url(self):
        return self.connection.url if self.connection is not None else None

    @property
    def active(self):
        """
        Whether puts of the producer belong to a transaction now.
        """
        return self.localActive or self.xid is not None

    def _request(self, kind, key, timeout=0):
        return self.connection.request(
            "transaction",
            key,
            self.sessionId,
            kind,
            timeout=self.requestTimeout,
            transactionTimeout=timeout,
            uniqueQualifier=self.uniqueQualifier,
        )

    # Local transactions

    def beginLocal(self):
        if self.xid is not None:
            raise TransactionInProgress(
                "Cannot start local transaction.  XA transaction is already in progress."
            )
        self.localActive = True

    def joinLocal(self, connection):
        """
        The key under which to put through C{connection}; begins the local
        transaction on that broker first if this is its first message.
        """
        if self.key is not None:
            return defer.succeed(self.key)
        self.connection = connection
        self.key = "TX:%s:%d" % (self.sessionId, next(self._localCounter))

        def begun(reply):
            if reply.code != OK:
                self.key = None
                raise MetaClientError(reply.body.decode("utf-8", "replace"))
            return self.key

        def failed(failure):
            self.key = None
            return failure

        return self._request("BEGIN", self.key, self.transactionTimeout).addCallbacks(
            begun, failed
        )

    async def completeLocal(self, kind, what):
        if self.xid is not None:
            raise TransactionInProgress(
                "Cannot %s() if an XA transaction is already in progress " % (what,)
            )
        key, self.key, self.localActive = self.key, None, False
        if key is None:
            raise MetaClientError("No transaction is started")
        try:
            reply = await self._request(kind, key)
        except MetaTimeoutError as e:
            raise MetaClientError(
                "%s transaction timeout,the transaction state is unknown,you must "
                "check it by yourself." % (what.capitalize(),)
            ) from e
        finally:
            self.connection = None
        if reply.code != OK:
            raise MetaClientError(reply.body.decode("utf-8", "replace"))

    # XA transactions

    async def sendXA(self, kind, xid, timeout=0):
        """
        One XA command; failures become L{XAException}s as Java maps them.

        @return: the reply body text.
        """
        try:
            reply = await self._request(kind, xid.key(self.uniqueQualifier), timeout)
        except MetaTimeoutError as e:
            raise XAException(XA_RBTIMEOUT, str(e)) from e
        except MetaConnectionError as e:
            raise XAException(XAER_RMFAIL, str(e)) from e
        body = reply.body.decode("utf-8", "replace")
        if reply.code != OK:
            raise XAException.fromReply(body)
        return body


class TransactionalProducerMixin:
    """
    The transaction hooks of a producer: puts made in a transaction carry
    its key and stay on the broker the transaction was begun on.
    """

    def _initTransactions(self, uniqueQualifier=None):
        self.transactionContext = TransactionContext(generateSessionId(), uniqueQualifier)

    def beginTransaction(self):
        """
        Start a local transaction: the following messages are sent in it,
        until L{commit} or L{rollback}.
        """
        self.transactionContext.beginLocal()

    def setTransactionTimeout(self, seconds):
        """
        Let the broker roll back a transaction left open for C{seconds}
        (0, the default: never).
        """
        if seconds < 0:
            raise ValueError("Illegal transaction timeout value")
        self.transactionContext.transactionTimeout = seconds

    def setTransactionRequestTimeout(self, seconds):
        self.transactionContext.requestTimeout = seconds

    def commit(self):
        """
        Commit the local transaction: all its messages become visible.

        @return: a Deferred; it fails with L{MetaClientError} "No transaction
            is started" if no message was sent in it.
        """
        return defer.ensureDeferred(
            self.transactionContext.completeLocal("COMMIT_ONE_PHASE", "commit")
        )

    def rollback(self):
        """
        Roll back the local transaction: none of its messages will appear.
        """
        return defer.ensureDeferred(
            self.transactionContext.completeLocal("ROLLBACK", "rollback")
        )

    def _select(self, message):
        partition, url = super()._select(message)
        context = self.transactionContext
        if not context.active or context.url is None or url == context.url:
            return partition, url
        topic = self._routeTopic(message.topic)
        discovery = self.sessionFactory.discovery
        candidates = [
            p
            for p in discovery.partitionsFor(topic) or ()
            if discovery.brokerUrlFor(topic, p) == context.url
        ]
        partition = (
            self.selector.getPartition(topic, candidates, message) if candidates else None
        )
        if partition is None:
            raise MetaClientError(
                "There is no partitions in `%s` to send message with topic `%s` in a "
                "transaction" % (context.url, message.topic)
            )
        return partition, context.url

    def _put(self, connection, topic, partition, body, flag, timeout):
        context = self.transactionContext
        if not context.active:
            return super()._put(connection, topic, partition, body, flag, timeout)
        if context.xid is not None:
            key = defer.succeed(context.xid.key(context.uniqueQualifier))
        else:
            key = context.joinLocal(connection)

        def put(key):
            return connection.request(
                "put",
                topic,
                partition.partition,
                body,
                flag,
                records.checksum(body),
                transactionKey=key,
                timeout=timeout,
            )

        return key.addCallback(put)


class TransactionalMessageProducer(TransactionalProducerMixin, MessageProducer):
    """
    A L{MessageProducer} with local transactions.
    """

    def __init__(self, sessionFactory, selector=None):
        MessageProducer.__init__(self, sessionFactory, selector)
        self._initTransactions()


HOSTNAME_VARIABLE = "METAQ_CLIENT_XAPRODUCER_HOSTNAME"


def localHostName():
    """
    The host name in XA unique qualifiers: C{$METAQ_CLIENT_XAPRODUCER_HOSTNAME}
    when set (Java's C{metaq.client.xaproducer.hostname} property), else
    this host's name.
    """
    return os.environ.get(HOSTNAME_VARIABLE, "").strip() or socket.gethostname()


def checkUniqueQualifier(value):
    if not value or not value.strip():
        raise ValueError("Blank unique qualifier for SimpleXAMessageProducer")
    if any(c in value for c in "\r\n\t: "):
        raise ValueError(
            "Invalid unique qualifier,it should not contains newline,':' or blank characters."
        )


class XAMessageProducer(TransactionalMessageProducer):
    """
    A producer whose messages can join XA transactions through
    L{getXAResource}.
    """

    def __init__(self, sessionFactory, selector=None, uniqueQualifier=None):
        TransactionalMessageProducer.__init__(self, sessionFactory, selector)
        if uniqueQualifier is None:
            self.setUniqueQualifierPrefix("XAMessageProducer")
        else:
            self.setUniqueQualifier(uniqueQualifier)

    @property
    def uniqueQualifier(self):
        return self.transactionContext.uniqueQualifier

    def setUniqueQualifier(self, uniqueQualifier):
        """
        The name of this resource in XA keys; it must stay the same across
        restarts for recovery to find the prepared branches.

        @raise ValueError: blank, or with a CR, LF, tab, colon or space.
        """
        checkUniqueQualifier(uniqueQualifier)
        self.transactionContext.uniqueQualifier = uniqueQualifier

    def setUniqueQualifierPrefix(self, prefix):
        """
        Name this resource C{<prefix>-<host name>} (L{localHostName}).
        """
        checkUniqueQualifier(prefix)
        self.transactionContext.uniqueQualifier = prefix + "-" + localHostName()

    def brokerUrls(self):
        """
        The brokers serving every published topic, sorted (Java picks the
        resource's broker among them).
        """
        discovery = self.sessionFactory.discovery
        urls = None
        for topic in self._topics:
            serving = set(discovery.brokerUrls(topic) or ())
            urls = serving if urls is None else urls & serving
        return sorted(urls or ())

    def getXAResource(self):
        """
        The L{MetaXAResource} of this producer, bound to one broker among
        those serving all its published topics.
        """
        urls = self.brokerUrls()
        if not urls:
            raise MetaClientError("There is no broker serving all the published topics")
        url = random.choice(urls)
        connection = self.sessionFactory.connections.get(url)
        if connection is None:
            raise MetaConnectionError("No connection to %s" % (url,))
        return MetaXAResource(self, connection, urls)


class MetaXAResource:
    """
    An XA resource (C{javax.transaction.xa.XAResource}) for a transaction
    manager: each method returns a Deferred and fails with L{XAException}.
    """

    def __init__(self, producer, connection, recoveryUrls):
        self.producer = producer
        self.context = producer.transactionContext
        self.connection = connection
        self.recoveryUrls = recoveryUrls

    @property
    def uniqueQualifier(self):
        return self.context.uniqueQualifier

    def isSameRM(self, other):
        return (
            isinstance(other, MetaXAResource)
            and other.uniqueQualifier == self.uniqueQualifier
            and other.connection is self.connection
        )

    def getTransactionTimeout(self):
        return self.context.transactionTimeout

    def setTransactionTimeout(self, seconds):
        self.context.transactionTimeout = seconds
        return True

    def _send(self, kind, xid, timeout=0):
        self.context.connection = self.connection
        return self.context.sendXA(kind, xid, timeout)

    def start(self, xid, flags=0):
        async def start():
            context = self.context
            if flags & (TMJOIN | TMRESUME):
                if xid != context.xid:
                    raise XAException(XAER_NOTA)
                return
            if context.localActive:
                raise XAException(XAER_PROTO, "Local transaction is in progress")
            if context.xid is not None:
                raise XAException(XAER_DUPID)
            if not self.connection.connected:
                raise XAException(XAER_RMFAIL, "No connection to %s" % (self.connection.url,))
            await self._send("BEGIN", xid, context.transactionTimeout)
            context.xid = xid

        return defer.ensureDeferred(start())

    def end(self, xid, flags=0):
        """
        Dissociate the producer from C{xid}; END is sent without waiting (the
        broker never answers it).
        """
        context = self.context
        if xid == context.xid:
            context.xid = None
        self.context.connection = self.connection
        pending = defer.ensureDeferred(self.context.sendXA("END", xid))
        pending.addErrback(
            lambda f: self.context.log.debug("END {xid}: {why}", xid=str(xid), why=errorText(f.value))
        )
        return defer.succeed(None)

    def prepare(self, xid):
        async def prepare():
            return int(await self._send("PREPARE", xid))

        return defer.ensureDeferred(prepare())

    def commit(self, xid, onePhase):
        return defer.ensureDeferred(
            self._send("COMMIT_ONE_PHASE" if onePhase else "COMMIT_TWO_PHASE", xid)
        )

    def rollback(self, xid):
        return defer.ensureDeferred(self._send("ROLLBACK", xid))

    def forget(self, xid):
        return defer.ensureDeferred(self._send("FORGET", xid))

    def recover(self, flags=0):
        """
        The prepared (and heuristically completed) branches of this resource
        on every broker it may have used; brokers that cannot answer are
        skipped.
        """

        async def recover():
            found = []
            for url in self.recoveryUrls:
                connection = self.producer.sessionFactory.connections.get(url)
                if connection is None:
                    continue
                try:
                    reply = await connection.request(
                        "transaction",
                        "null",
                        self.context.sessionId,
                        "RECOVER",
                        timeout=self.context.requestTimeout,
                        uniqueQualifier=self.uniqueQualifier,
                    )
                except (MetaTimeoutError, MetaConnectionError) as e:
                    raise XAException(XAER_RMFAIL, str(e)) from e
                if reply.code != OK:
                    continue
                body = reply.body.decode("utf-8")
                for key in body.split("\r\n") if body else ():
                    xid = Xid.fromKey(key)
                    if xid not in found:
                        found.append(xid)
            return found

        return defer.ensureDeferred(recover())
