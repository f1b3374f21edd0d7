"""
The broker's registration in ZooKeeper (docs/zookeeper.md).

Producers and consumers find a broker and its partitions only through the
znodes written here, so they are those of the Java C{BrokerZooKeeper}: the
same paths, data, ephemerality and parents without data.  Unlike the Java
broker, ours does not need ZooKeeper to start or to serve: registration runs
in the background whenever a session is up and is redone after every
reconnection, so an outage only hides the broker from new clients for as
long as it lasts.
"""

import json

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    ConnectionClosedError,
    ConnectionLoss,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    SessionExpiredError,
)
from twisted.application import service
from twisted.internet.defer import (
    CancelledError,
    DeferredList,
    DeferredLock,
    DeferredSemaphore,
    TimeoutError,
    inlineCallbacks,
    succeed,
)
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from metamorphosis import zk
from metamorphosis.broker.address import brokerURL, localHost
from metamorphosis.logfields import errorText

#: The errors that mean "the session is gone or going": the work is redone
#: when kazoo reports the next connection.
_DISCONNECTED = (ConnectionLoss, SessionExpiredError, ConnectionClosedError)


class BrokerIdConflict(Exception):
    """
    Another broker, at another address, holds this broker's C{master} (or
    C{slave<n>}) node.
    """


class BrokerZooKeeper(service.Service):
    """
    Keeps this broker registered in ZooKeeper for as long as it runs.

    How the broker service uses it::

        registration = BrokerZooKeeper(config)   # a MetaConfig
        for topic in storeManager.topics():      # stores found on disk
            registration.registerTopic(topic)
        registration.setServiceParent(brokerService)
        ...                                      # once the port is bound:
        registration.setBrokerAddress(port.getHost().port)
        ...                                      # a put created a new topic:
        registration.registerTopic(topic)
        ...                                      # the config was reloaded:
        registration.reloadConfig(newConfig)

    An asynchronous slave passes its C{slaveId}: it registers
    C{ids/<id>/slave<n>} and topic nodes C{<id>-s<n>}, and neither
    C{ids/<id>} nor C{master_config_checksum} (docs/zookeeper.md).
    A broker that must vanish from ZooKeeper for a while (a sync master whose
    slave fails, a promoted master before its offsets are recovered: docs/ha.md) calls L{unregisterEverything}, and
    L{registerEverything} to come back; calling L{unregisterEverything}
    before L{startService} starts the broker unregistered.

    None of these methods blocks, raises for ZooKeeper's sake or returns
    anything to wait for; they are cheap to call on every put that creates a
    store.  The configured topics (not the wildcard sections) are registered
    from the constructor on, before any topic passed to L{registerTopic}, as
    the Java broker orders them.  Nothing is written before
    L{setBrokerAddress} is called.  With C{zk.zkEnable=false} or no
    C{zk.zkConnect} the service does nothing at all.

    Start-up never waits for ZooKeeper: L{startService} starts kazoo's
    threads, which keep trying to connect.  Each time a session is
    (re-)established - the first connection, a reconnection, a new session
    after an expiry - every node is checked and (re)created; errors other
    than a lost connection are logged and the registration retried after
    L{retryDelay} seconds.

    L{stopService} deletes what this session registered (and the persistent
    C{ids/<id>} node, or blanks it if a slave's node is still below it),
    closes the session, then waits C{zk.zkSyncTimeMs} so that clients see
    the broker leave before its connections drop, as the Java broker does:
    stop the listening port after the returned Deferred fires to get that
    effect.  The wait is skipped when nothing was registered; the removal is
    abandoned after C{zk.zkConnectionTimeoutMs} if ZooKeeper does not answer.

    The state of the session is in the broker's C{stats zookeeper}
    (L{statsItems}):
    C{zk_state} is C{disabled}, C{connecting}, C{connected}, C{suspended}
    (the connection dropped: the session may still be alive, kazoo is
    reconnecting), C{unreachable} (no ZooKeeper server reached for longer
    than the session timeout: unless the whole ensemble is below quorum,
    which expires no session, ZooKeeper has expired the session, so the
    broker's ephemeral nodes are gone and new clients do not find it),
    C{expired} (ZooKeeper said so on reconnection; a new session follows at
    once) or C{stopped};
    C{zk_registered} says whether this session's registration is complete.
    Whatever the state, the broker goes on serving puts and gets.

    @ivar brokerString: C{meta://host:port} once the address is known, else
        L{None}.
    @ivar takeOver: L{None}, or (set by a slave promoted by failover) a
        callable giving a Deferred of whether this broker may replace, now,
        nodes of its id held by another session - its old master's, whose
        session has not expired yet - rather than see a conflict: whether
        the failover record names it, read just before.
    @ivar state: the C{zk_state} text.
    @ivar tlsBrokerString: the same for the TLS listener, if there is one.
    """

    log = Logger()

    #: Seconds between two attempts when a registration fails for another
    #: reason than a lost connection.
    retryDelay = 5.0

    #: How many topics are (un)registered at once.
    parallelism = 8

    def __init__(self, config, slaveId=-1, clientFactory=KazooClient, reactor=None):
        """
        @param config: the broker's L{metamorphosis.broker.config.MetaConfig}.
        @param slaveId: the slave id of an asynchronous slave; -1 for a
            master.
        @param clientFactory: makes the kazoo client; called as
            L{KazooClient} is, with C{hosts}, C{timeout} and
            C{connection_retry}.
        """
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._clientFactory = clientFactory
        self.config = config
        self.slaveId = slaveId
        self.paths = zk.ZkPaths(config.zookeeper.zkRoot)
        self.brokerString = None
        self.tlsBrokerString = None
        self.client = None
        self._topics = {}
        self._lock = DeferredLock()
        self._passWaiting = False
        self._retryCall = None
        self._clientStarted = None
        self._registeredSession = None
        self._withdrawn = False
        self.takeOver = None
        self._expiryCall = None
        self.state = "disabled"
        self._addConfiguredTopics()

    @property
    def isSlave(self):
        return self.slaveId >= 0

    @property
    def enabled(self):
        """
        Whether this broker writes to ZooKeeper at all.
        """
        zkConfig = self.config.zookeeper
        return bool(zkConfig.zkEnable and zkConfig.zkConnect)

    @property
    def registered(self):
        """
        Whether the broker is registered in the current ZooKeeper session.
        """
        return self._isRegistered()

    def _addConfiguredTopics(self):
        for topic in self.config.topics:
            if "*" not in topic:
                self._topics.setdefault(topic, None)

    def setBrokerAddress(self, port, host=None):
        """
        Give the address clients should use: the bound port, and the host
        (default: C{hostName} of the config, else L{localHost}).
        Registration starts once this is known.
        """
        if host is None:
            host = self.config.hostName or localHost()
        self.brokerString = brokerURL(host, port)
        self._queueRegistration()

    def setTLSAddress(self, port, host=None):
        """
        Give the address of the broker's TLS listener, registered in
        C{ids/<id>/tls-master} (or C{tls-slave<n>}) beside the plain one.
        Call it before L{setBrokerAddress}.
        """
        if host is None:
            host = self.config.hostName or localHost()
        self.tlsBrokerString = brokerURL(host, port)

    def registerTopic(self, topic):
        """
        Make C{topic} visible to producers and consumers (as far as its
        C{acceptPublish} and C{acceptSubscribe} allow).  Known topics and
        wildcard names are ignored.
        """
        if "*" in topic or topic in self._topics:
            return
        self._topics[topic] = None
        if self._isRegistered():
            self._guarded(self._lock.run(self._registerTopic, topic))

    def reloadConfig(self, config):
        """
        Adopt a reloaded configuration: the checksum node is updated,
        topics whose partition count or C{accept*} flags changed are
        re-registered and new configured topics are registered.
        """
        self.config = config
        self._addConfiguredTopics()
        self._queueRegistration()

    def unregisterEverything(self):
        """
        Remove this broker's nodes from ZooKeeper and stop registering it
        until L{registerEverything}; the session stays open.

        @return: a Deferred that fires when the nodes are gone (or could not
            be removed, which is logged); it never fails.
        """
        self._withdrawn = True
        self._registeredSession = None
        if self.client is None or not self.client.connected:
            return succeed(False)
        return self._removeNodes(self.client)

    def registerEverything(self):
        """
        Register this broker again after L{unregisterEverything}.
        """
        self._withdrawn = False
        self._queueRegistration()

    # Service

    def startService(self):
        service.Service.startService(self)
        if not self.enabled:
            self.log.info(
                "ZooKeeper registration disabled (zk.zkEnable=false or no zk.zkConnect)"
            )
            return
        zkConfig = self.config.zookeeper
        try:
            self.client = zk.newClient(zkConfig, self._clientFactory)
        except Exception:
            self.log.failure(
                "Bad ZooKeeper connect string {connect!r}: not registering",
                connect=zkConfig.zkConnect,
            )
            return
        self.client.add_listener(self._kazooStateChanged)
        self.log.info(
            "Connecting to ZooKeeper {connect} (root {root})",
            connect=zkConfig.zkConnect,
            root=self.paths.root,
        )
        self.state = "connecting"
        self._clientStarted = deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(), self.client.start_async
        )
        self._guarded(self._clientStarted)

    @inlineCallbacks
    def stopService(self):
        service.Service.stopService(self)
        if self._retryCall is not None and self._retryCall.active():
            self._retryCall.cancel()
        self._cancelExpiryCall()
        client, self.client = self.client, None
        if client is not None:
            self.state = "stopped"
        if client is None:
            return
        yield self._clientStarted
        self._registeredSession = None
        removed = False
        if client.connected and not self._withdrawn:
            removed = yield self._removeNodes(client)
        yield zk.disconnect(client, self._reactor)
        syncTime = self.config.zookeeper.zkSyncTimeMs / 1000.0
        if removed and syncTime > 0:
            yield deferLater(self._reactor, syncTime, lambda: None)

    @inlineCallbacks
    def _removeNodes(self, client):
        """
        Run L{_unregister} after any registration in progress, giving up
        after C{zk.zkConnectionTimeoutMs}.

        @return: a Deferred firing with whether this broker's own node was
            removed.
        """
        unregistering = self._lock.run(self._unregister, client)
        unregistering.addTimeout(
            self.config.zookeeper.zkConnectionTimeoutMs / 1000.0, self._reactor
        )
        try:
            removed = yield unregistering
        except _DISCONNECTED + (TimeoutError, CancelledError) as e:
            self.log.warn(
                "ZooKeeper did not answer ({error!r}) while removing this "
                "broker; its ephemeral nodes go when the session ends",
                error=errorText(e),
            )
        except Exception:
            self.log.failure("Could not remove this broker from ZooKeeper")
        else:
            return removed
        return False

    # Session tracking

    def _kazooStateChanged(self, state):
        # Called in kazoo's connection thread: hand over to the reactor.
        self._reactor.callFromThread(self._stateChanged, state)

    def _stateChanged(self, state):
        if self.client is None:
            return
        self._cancelExpiryCall()
        if state == KazooState.CONNECTED:
            self.state = "connected"
            self.log.info(
                "ZooKeeper session 0x{session:x} connected",
                session=self._sessionId() or 0,
            )
            self._queueRegistration()
        elif state == KazooState.SUSPENDED:
            self.state = "suspended"
            self.log.warn(
                "Lost the ZooKeeper connection; reconnecting, still serving"
            )
            self._expiryCall = self._reactor.callLater(
                self.config.zookeeper.zkSessionTimeoutMs / 1000.0, self._presumedExpired
            )
        else:
            self.state = "expired"
            self.log.warn(
                "ZooKeeper session lost; this broker will register again "
                "in a new session"
            )
            self._registeredSession = None

    def _presumedExpired(self):
        """
        The connection has been down for a whole session timeout: a
        ZooKeeper ensemble that has a quorum has expired the session (kazoo
        learns it only once it reaches a server again), so new clients no
        longer find this broker.  Registration is redone, whatever happened,
        on the next connection.
        """
        self._expiryCall = None
        self.state = "unreachable"
        self._registeredSession = None
        self.log.warn(
            "ZooKeeper unreachable for longer than the session timeout "
            "({timeout} ms): unless the whole ensemble is below quorum, the "
            "session has expired and new clients no longer find this broker; "
            "connected clients are still served, and it registers again once "
            "ZooKeeper answers",
            timeout=self.config.zookeeper.zkSessionTimeoutMs,
        )

    def _cancelExpiryCall(self):
        if self._expiryCall is not None and self._expiryCall.active():
            self._expiryCall.cancel()
        self._expiryCall = None

    def statsItems(self):
        """
        The lines of C{stats zookeeper}: C{zk_state} and C{zk_registered}.
        """
        return [("zk_state", self.state), ("zk_registered", self._isRegistered())]

    def _sessionId(self, client=None):
        clientId = (client or self.client).client_id
        return clientId[0] if clientId else None

    def _isRegistered(self, client=None):
        client = client or self.client
        return (
            client is not None
            and client.connected
            and self._registeredSession is not None
            and self._registeredSession == self._sessionId(client)
        )

    def _canRegister(self):
        return (
            self.running
            and not self._withdrawn
            and self.client is not None
            and self.client.connected
            and self.brokerString is not None
        )

    # Registration

    def _queueRegistration(self):
        if self._passWaiting or not self._canRegister():
            return
        self._passWaiting = True
        self._guarded(self._lock.run(self._registerEverything))

    def _guarded(self, d):
        d.addErrback(self._failed)

    def _failed(self, failure):
        if failure.check(*_DISCONNECTED):
            self.log.info(
                "ZooKeeper registration interrupted ({error}); it resumes on "
                "reconnection",
                error=failure.getErrorMessage() or failure.type.__name__,
            )
            return
        if failure.check(CancelledError) or not self.running:
            return
        if failure.check(BrokerIdConflict):
            self.log.error(
                "Broker id {brokerId} is taken: {error}; retrying in {delay} s",
                brokerId=self.config.brokerId,
                error=failure.getErrorMessage(),
                delay=self.retryDelay,
            )
        else:
            self.log.failure(
                "ZooKeeper registration failed; retrying in {delay} s",
                failure,
                delay=self.retryDelay,
            )
        if self._retryCall is None or not self._retryCall.active():
            self._retryCall = self._reactor.callLater(
                self.retryDelay, self._queueRegistration
            )

    @inlineCallbacks
    def _registerEverything(self):
        self._passWaiting = False
        if not self._canRegister():
            return
        session = self._sessionId()
        yield self._registerBroker()
        if not self.isSlave:
            yield self._putEphemeral(
                self.paths.masterConfigChecksumPath(self.config.brokerId),
                str(self.config.checksum),
            )
        self._registeredSession = session
        yield self._inParallel(self._registerTopic, list(self._topics))
        self.log.info(
            "Registered {broker} in ZooKeeper as {name} with {count} topics",
            broker=self.brokerString,
            name=self.paths.topicBrokerName(self.config.brokerId, self.slaveId),
            count=len(self._topics),
        )

    @inlineCallbacks
    def _registerBroker(self):
        """
        C{ids/<id>/master} (ephemeral), then the URL in C{ids/<id>}, as
        Java C{registerBrokerInZk} writes them; a slave's
        C{ids/<id>/slave<n>} alone. The TLS listener's URL, if any, goes to
        C{tls-master} (C{tls-slave<n>}) once the plain node is ours.
        """
        brokerId = self.config.brokerId
        yield self._putEphemeral(
            self.paths.brokerIdsPathOf(brokerId, self.slaveId),
            self.brokerString,
            exclusive=True,
        )
        if self.tlsBrokerString is not None:
            yield self._putEphemeral(
                self.paths.tlsBrokerIdsPathOf(brokerId, self.slaveId), self.tlsBrokerString
            )
        elif self.takeOver is not None and not self.isSlave:
            # The replaced master's TLS address must not outlive it either.
            path = self.paths.tlsBrokerIdsPathOf(brokerId)
            stat = yield self._call("exists_async", path)
            if stat is not None and stat.ephemeralOwner != self._sessionId() and (yield self.takeOver()):
                try:
                    yield self._call("delete_async", path, stat.version)
                except NoNodeError:
                    pass
        if self.isSlave:
            return
        idPath = self.paths.brokerIdPath(brokerId)
        data, _ = yield self._call("get_async", idPath)
        if data != self.brokerString.encode("utf-8"):
            yield self._call("set_async", idPath, self.brokerString.encode("utf-8"))

    @inlineCallbacks
    def _registerTopic(self, topic):
        """
        The three nodes of a topic (Java C{registerTopicInZkInternal}): the
        partition count under C{topics}, and the JSON under C{topics-pub} and
        C{topics-sub} when the topic accepts publishing resp. subscribing
        (removed otherwise).
        """
        if not self._isRegistered():
            return
        topicConfig = self.config.topicConfig(topic)
        brokerId, slaveId = self.config.brokerId, self.slaveId
        numParts = topicConfig.numPartitions
        topicBroker = json.dumps(
            {"numParts": numParts, "broker": self.paths.topicBrokerName(brokerId, slaveId)},
            separators=(",", ":"),
        )
        yield self._putEphemeral(
            self.paths.brokerTopicsPathOf(topic, brokerId, slaveId),
            str(numParts),
            recreate=True,
        )
        for accepted, path in [
            (
                topicConfig.acceptPublish,
                self.paths.brokerTopicsPubPathOf(topic, brokerId, slaveId),
            ),
            (
                topicConfig.acceptSubscribe,
                self.paths.brokerTopicsSubPathOf(topic, brokerId, slaveId),
            ),
        ]:
            if accepted:
                yield self._putEphemeral(path, topicBroker, recreate=True)
            else:
                yield self._deleteOwn(path)

    @inlineCallbacks
    def _putEphemeral(self, path, data, exclusive=False, recreate=False):
        """
        Make C{path} an ephemeral node of this session holding C{data},
        creating missing parents without data.

        A node left by an earlier session (this broker restarted before its
        old session expired) is replaced.  With C{exclusive}, a node of
        another session holding other data belongs to another live broker:
        L{BrokerIdConflict}.  A node of this session holding other data is
        updated in place, or deleted and created again with C{recreate} so
        that clients watching the parent's children notice the change.
        """
        value = data.encode("utf-8")
        while True:
            try:
                yield self._call("create_async", path, value, ephemeral=True)
                return
            except NoNodeError:
                yield zk.ensurePath(self.client, path.rsplit("/", 1)[0], self._reactor)
                continue
            except NodeExistsError:
                pass
            try:
                current, stat = yield self._call("get_async", path)
            except NoNodeError:
                continue
            ours = stat.ephemeralOwner == self._sessionId()
            if ours and current == value:
                return
            if ours and not recreate:
                yield self._call("set_async", path, value, stat.version)
                return
            if exclusive and not ours and current != value and not (
                self.takeOver is not None and (yield self.takeOver())
            ):
                raise BrokerIdConflict(
                    "%s is held by another session with %r"
                    % (path, current.decode("utf-8", "replace") if current else current)
                )
            try:
                yield self._call("delete_async", path, stat.version)
            except NoNodeError:
                pass

    @inlineCallbacks
    def _deleteOwn(self, path, client=None):
        """
        Delete C{path} if it is an ephemeral node of this session.

        @return: a Deferred firing with whether it was.
        """
        client = client or self.client
        stat = yield self._call("exists_async", path, client=client)
        if stat is None or stat.ephemeralOwner != self._sessionId(client):
            return False
        try:
            yield self._call("delete_async", path, stat.version, client=client)
        except NoNodeError:
            pass
        return True

    @inlineCallbacks
    def _unregister(self, client):
        """
        Java C{BrokerZooKeeper.close(true)}: C{master} (or C{slave<n>}), the
        checksum, then C{ids/<id>} (blanked if an async slave's node is below
        it), then the topics' nodes; only nodes of this session.

        @return: a Deferred firing with whether this broker's own node was
            removed.
        """
        brokerId, slaveId = self.config.brokerId, self.slaveId
        yield self._deleteOwn(self.paths.tlsBrokerIdsPathOf(brokerId, slaveId), client)
        removed = yield self._deleteOwn(
            self.paths.brokerIdsPathOf(brokerId, slaveId), client
        )
        if not self.isSlave:
            yield self._deleteOwn(self.paths.masterConfigChecksumPath(brokerId), client)
        if removed and not self.isSlave:
            idPath = self.paths.brokerIdPath(brokerId)
            try:
                yield self._call("delete_async", idPath, client=client)
            except NoNodeError:
                pass
            except NotEmptyError:
                # An async slave remains, or a broker with our id took over.
                children = yield self._call("get_children_async", idPath, client=client)
                if "master" not in children:
                    yield self._call("set_async", idPath, b"", client=client)
        yield self._inParallel(
            lambda path: self._deleteOwn(path, client),
            [
                path
                for topic in list(self._topics)
                for path in [
                    self.paths.brokerTopicsPathOf(topic, brokerId, slaveId),
                    self.paths.brokerTopicsPubPathOf(topic, brokerId, slaveId),
                    self.paths.brokerTopicsSubPathOf(topic, brokerId, slaveId),
                ]
            ],
        )
        if removed:
            self.log.info("Removed {broker} from ZooKeeper", broker=self.brokerString)
        return removed

    @inlineCallbacks
    def _inParallel(self, function, items):
        """
        C{function(item)} for every item, at most L{parallelism} at a time:
        kazoo pipelines the requests on its connection, so a broker with
        many topics does not pay one round trip after another.  Waits for
        all, then fails with the first failure if any.
        """
        semaphore = DeferredSemaphore(self.parallelism)
        results = yield DeferredList(
            [semaphore.run(function, item) for item in items], consumeErrors=True
        )
        for succeeded, result in results:
            if not succeeded:
                result.raiseException()

    def _call(self, method, *args, client=None, **kwargs):
        client = client or self.client
        if client is None:
            raise ConnectionClosedError("ZooKeeper client stopped")
        return zk.deferKazoo(getattr(client, method)(*args, **kwargs), self._reactor)
