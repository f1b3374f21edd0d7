"""
ZooKeeper for Twisted code: MetaQ's znode layout and kazoo bridged into
Deferreds.

kazoo runs its own threads and its synchronous calls block until ZooKeeper
answers, so code on the reactor thread never calls them directly.  It uses
kazoo's C{*_async} methods, whose results L{deferKazoo} turns into Deferreds
that fire on the reactor thread, and runs the few calls that have no
asynchronous form (starting and stopping a client) in the reactor's thread
pool, as L{connect} and L{disconnect} do.

Node data is the UTF-8 text of a string, as Java MetaQ's zkclient
C{StringSerializer} writes it; persistent parents are created without data
(a null buffer, not an empty one), as zkclient's C{createPersistent(path,
true)} creates them (docs/zookeeper.md).
"""

import logging

from kazoo.client import KazooClient
from kazoo.exceptions import NodeExistsError, NoNodeError
from kazoo.retry import KazooRetry
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure


def normalizeRoot(root):
    """
    C{zk.zkRoot} as Java C{MetaZookeeper.normalize} makes it: with a leading
    C{/} and without one trailing C{/}.
    """
    if root.endswith("/"):
        root = root[:-1]
    if not root.startswith("/"):
        root = "/" + root
    return root


class ZkPaths:
    """
    The znode paths of MetaQ below one C{zk.zkRoot} (Java C{MetaZookeeper}).

    A broker is named by its id and, for an asynchronous slave, its slave
    id; C{slaveId=-1} (the default) means the master.
    """

    def __init__(self, root="/meta"):
        self.root = normalizeRoot(root)
        self.consumersPath = self.root + "/consumers"
        self.brokerIdsPath = self.root + "/brokers/ids"
        self.brokerTopicsPath = self.root + "/brokers/topics"
        self.brokerTopicsPubPath = self.root + "/brokers/topics-pub"
        self.brokerTopicsSubPath = self.root + "/brokers/topics-sub"

    def brokerIdPath(self, brokerId):
        """
        C{ids/<brokerId>}: the persistent node that pre-1.4 clients read.
        """
        return "%s/%d" % (self.brokerIdsPath, brokerId)

    def brokerIdsPathOf(self, brokerId, slaveId=-1):
        """
        C{ids/<brokerId>/master} or C{ids/<brokerId>/slave<slaveId>}.
        """
        if slaveId >= 0:
            return "%s/slave%d" % (self.brokerIdPath(brokerId), slaveId)
        return self.brokerIdPath(brokerId) + "/master"

    def tlsBrokerIdsPathOf(self, brokerId, slaveId=-1):
        """
        C{ids/<brokerId>/tls-master} or C{ids/<brokerId>/tls-slave<slaveId>}:
        the C{meta://host:port} of the broker's TLS listener. Java clients
        never read it: they take C{master} and the children whose name
        starts with C{slave}.
        """
        if slaveId >= 0:
            return "%s/tls-slave%d" % (self.brokerIdPath(brokerId), slaveId)
        return self.brokerIdPath(brokerId) + "/tls-master"

    def masterConfigChecksumPath(self, brokerId):
        return self.brokerIdPath(brokerId) + "/master_config_checksum"

    @staticmethod
    def topicBrokerName(brokerId, slaveId=-1):
        """
        A broker's child name under a topic: C{<id>-m} or C{<id>-s<slaveId>}.
        """
        if slaveId >= 0:
            return "%d-s%d" % (brokerId, slaveId)
        return "%d-m" % (brokerId,)

    def brokerTopicsPathOf(self, topic, brokerId, slaveId=-1):
        """
        C{topics/<topic>/<id>-m}, the layout of clients before 1.4.3.
        """
        return "%s/%s/%s" % (
            self.brokerTopicsPath, topic, self.topicBrokerName(brokerId, slaveId)
        )

    def brokerTopicsPubPathOf(self, topic, brokerId, slaveId=-1):
        return "%s/%s/%s" % (
            self.brokerTopicsPubPath, topic, self.topicBrokerName(brokerId, slaveId)
        )

    def brokerTopicsSubPathOf(self, topic, brokerId, slaveId=-1):
        return "%s/%s/%s" % (
            self.brokerTopicsSubPath, topic, self.topicBrokerName(brokerId, slaveId)
        )


def _reactor(reactor):
    if reactor is None:
        from twisted.internet import reactor
    return reactor


class _TwistedLogHandler(logging.Handler):
    """
    Hands kazoo's log records (connection attempts, drops, expiries) to
    Twisted's log on the reactor thread, so that they land in the broker's
    log rather than on standard error.
    """

    log = Logger(namespace="kazoo")
    _levels = [
        (logging.CRITICAL, LogLevel.critical),
        (logging.ERROR, LogLevel.error),
        (logging.WARNING, LogLevel.warn),
        (logging.INFO, LogLevel.info),
    ]

    def emit(self, record):
        level = LogLevel.debug
        for number, twistedLevel in self._levels:
            if record.levelno >= number:
                level = twistedLevel
                break
        _reactor(None).callFromThread(
            self.log.emit, level, "{message}", message=record.getMessage()
        )


def kazooLogger():
    """
    The stdlib logger to give kazoo clients (their C{logger} argument):
    its warnings and errors go to Twisted's log.
    """
    logger = logging.getLogger("metamorphosis.kazoo")
    if not logger.handlers:
        logger.addHandler(_TwistedLogHandler())
        logger.setLevel(logging.WARNING)
        logger.propagate = False
    return logger


def newClient(zkConfig, clientFactory=KazooClient, **kwargs):
    """
    A kazoo client, not yet started, for a L{ZookeeperConfig}: its session
    timeout is C{zkSessionTimeoutMs}, and it keeps trying to (re)connect for
    as long as it is started, with at most a few seconds between attempts,
    as zkclient does; it logs through L{kazooLogger}.

    @param kwargs: passed on to C{clientFactory}.
    """
    kwargs.setdefault("logger", kazooLogger())
    kwargs.setdefault(
        "connection_retry", KazooRetry(max_tries=-1, max_delay=2)
    )
    return clientFactory(
        hosts=zkConfig.zkConnect,
        timeout=zkConfig.zkSessionTimeoutMs / 1000.0,
        **kwargs,
    )


def connect(zkConfig, clientFactory=KazooClient, reactor=None, **kwargs):
    """
    Start a kazoo client off the reactor thread.

    @return: a Deferred that fires with the connected client, or fails (and
        the client is stopped and closed) when no session is established
        within C{zkConnectionTimeoutMs}.
    """
    reactor = _reactor(reactor)
    client = newClient(zkConfig, clientFactory, **kwargs)

    def start():
        try:
            client.start(zkConfig.zkConnectionTimeoutMs / 1000.0)
        except BaseException:
            # kazoo has stopped the client; free its sockets too.
            client.close()
            raise
        return client

    return deferToThreadPool(reactor, reactor.getThreadPool(), start)


def disconnect(client, reactor=None):
    """
    Close the session of a kazoo client and free its threads, off the
    reactor thread.  The session's ephemeral nodes vanish at once.
    """
    reactor = _reactor(reactor)

    def stopAndClose():
        client.stop()
        client.close()

    return deferToThreadPool(reactor, reactor.getThreadPool(), stopAndClose)


def deferKazoo(asyncResult, reactor=None):
    """
    A Deferred for the result of one of kazoo's C{*_async} calls, fired on
    the reactor thread.

    Cancelling the Deferred only stops waiting: the request stays with
    kazoo, which fails it if the session ends.
    """
    reactor = _reactor(reactor)
    d = Deferred(lambda _: None)

    def fire(method, result):
        if not d.called:
            method(result)

    def completed(result):
        try:
            value = result.get(block=False)
        except BaseException:
            reactor.callFromThread(fire, d.errback, Failure())
        else:
            reactor.callFromThread(fire, d.callback, value)

    asyncResult.rawlink(completed)
    return d


@inlineCallbacks
def ensurePath(client, path, reactor=None):
    """
    Create C{path} and its missing ancestors as persistent nodes without
    data, as zkclient's C{createPersistent(path, true)} does.

    @return: a Deferred that fires when C{path} exists.
    """
    try:
        yield deferKazoo(client.create_async(path, None), reactor)
    except NodeExistsError:
        pass
    except NoNodeError:
        yield ensurePath(client, path.rsplit("/", 1)[0], reactor)
        yield ensurePath(client, path, reactor)


def childrenOf(client, path):
    """
    The sorted children of C{path}, or none where it does not exist
    (blocking: call it in a thread).  For readers of the layout, such as the
    tools and the dashboard, which show what is there while it changes.
    """
    try:
        return sorted(client.get_children(path))
    except NoNodeError:
        return []


def textOf(client, path):
    """
    The data of C{path} as text, or L{None} where it is absent or empty
    (blocking: call it in a thread).
    """
    try:
        value, _ = client.get(path)
    except NoNodeError:
        return None
    return value.decode("utf-8", "replace") if value else None
