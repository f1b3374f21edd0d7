"""
The broker as a Twisted service: C{twistd metaq} / C{twist metaq}.

L{BrokerService} owns the lifetimes: it recovers the message stores, then
listens, then registers in ZooKeeper (so ZooKeeper never advertises a broker
that cannot answer), and stops in the reverse order, flushing the stores
last. L{Options} and L{makeService} are what the plugin in
C{twisted/plugins/metaq.py} exposes.
"""

import os
import signal

from twisted.application import internet, service
from twisted.internet import defer, endpoints
from twisted.logger import Logger
from twisted.python import usage

from metamorphosis.broker.access import AccessGate
from metamorphosis.broker.address import localHost
from metamorphosis.broker.config import (
    ConfigError,
    loadConfig,
    reloadTopics,
    standaloneConfig,
)
from metamorphosis.broker.idlepoll import IdlePoller
from metamorphosis.broker.listeners import (
    Listener,
    ListenerError,
    buildListeners,
    isTLS,
    plainAndTLS,
)
from metamorphosis.broker.server import IDLE_TIMEOUT, BrokerFactory, BrokerProcessor
from metamorphosis.broker.stats import REALTIME_RESET_INTERVAL, StatsManager
from metamorphosis.broker.store import MessageStoreManager
from metamorphosis.broker.transactions.processor import TransactionalProcessor
from metamorphosis.broker.zookeeper import BrokerZooKeeper
from metamorphosis.ha.config import ReplicationConfigError
from metamorphosis.ha.failover import installFence
from metamorphosis.ha.modes import replicationFor
from metamorphosis.logfields import errorText, hostPort
from metamorphosis.protocol.ids import IdWorker


class BrokerService(service.Service):
    """
    The whole broker: stores, transactions, the listeners, ZooKeeper
    registration, and the services that run beside a serving broker (the
    realtime-stats reset timer, the failover fence, replication, and
    whatever L{addService} adds).

    A plain service that owns its parts, because their order matters and is
    not a tree's: L{startService} runs L{_start}, which brings them up one
    after the other, each once the one before is ready:

      0. the HTTP endpoint (metrics, health) listens, so that C{/health}
         answers while the stores recover;
      1. the message stores recover (nothing is served before);
      2. the transactions replay their journal (prepared transactions are
         known before a client can ask about them);
      3. every listener listens (L{addListener} adds one, e.g. a TLS port);
      4. ZooKeeper registration starts with the bound addresses (ZooKeeper
         never advertises a broker that cannot answer);
      5. the beside-services start, in the order they were added.

    L{stopService} runs L{_stop}, the reverse: the beside-services stop
    (last added first), the broker leaves ZooKeeper (clients stop choosing
    it while it still answers), the listeners close, what was received is
    answered and the connections closed, the transactions stop, the stores
    flush and close, and the HTTP endpoint closes last.

    @ivar listeners: the L{metamorphosis.broker.listeners.Listener}s.
    @ivar port: the listening port of the first plain listener (the address
        registered for Java clients) once started, else of the first one.
    @ivar ports: listener name to its L{IListeningPort}.
    @ivar services: the services run beside the serving broker, in start
        order.
    @ivar started: a Deferred that fires with L{port} when the broker
        serves (and fails if it cannot start).
    """

    log = Logger()

    def __init__(self, config, endpoint, reactor=None, zookeeper=None,
                 idleTimeout=IDLE_TIMEOUT, replication=None, httpEndpoint=None):
        """
        @param endpoint: a server endpoint, or a list of L{Listener}s.
        """
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.config = config
        if not isinstance(endpoint, list):
            endpoint = [Listener("plain", "tcp", endpoint)]
        self.listeners = list(endpoint)
        self.storeManager = MessageStoreManager(config, reactor)
        self.stats = StatsManager(config, self.storeManager, clock=reactor.seconds)
        idWorker = IdWorker(config.brokerId)
        self.processor = BrokerProcessor(
            config, self.storeManager, self.stats, idWorker, config.hostName or localHost(),
        )
        self.transactions = TransactionalProcessor(
            config, self.storeManager, idWorker, self.stats, reactor)
        # The [access] rules are read at each check: a reload changes them.
        self.access = AccessGate(lambda: config.access, clock=reactor)
        self.transactions.access = self.access
        self.factory = BrokerFactory(self.processor, self.stats, self.transactions,
                                     idleTimeout=idleTimeout, access=self.access)
        self.zookeeper = zookeeper
        if zookeeper is not None:
            self.processor.registerTopic = zookeeper.registerTopic
            self.stats.extraItems["zookeeper"] = zookeeper.statsItems
        self.services = []
        timer = internet.TimerService(REALTIME_RESET_INTERVAL, self.stats.realtime.reset)
        timer.clock = reactor
        self.timer = timer
        self.addService(timer)
        if config.idlePollMicros:
            poller = IdlePoller(reactor, config.idlePollMicros / 1e6,
                                threadsWorking=self._fsyncsInThreads)
            self.addService(poller)
            self.factory.idlePoller = poller
        # Replication (docs/ha.md): its request handling is plugged into the
        # factory now; its service runs beside the serving broker.
        self.replication = replication
        self.replicationService = None
        if replication is not None:
            replication.install(self.factory)
            self.stats.summaryExtensions.append(replication.statsItems)
            self.replicationService = replication.makeService(self)
        # A master refuses writes while a failover record names another
        # broker (docs/ha.md, "Failover"); the fence wraps the processors
        # replication installed, so it is installed after them.
        slave = replication is not None and replication.slave
        self.fence = None if slave else installFence(self)
        if self.fence is not None:
            self.addService(self.fence)
        if self.replicationService is not None:
            self.addService(self.replicationService)
        self.port = None
        self.ports = {}
        self.started = None
        self._previousHangup = None
        # The SIGTERM handler _terminate wraps, and what it calls on the
        # first SIGTERM.
        self._guarded = self._firstTerminate = None
        # Metrics, health and the dashboard (docs/operations.md); created
        # last, as it reads all of the above.
        self.http = None
        if httpEndpoint is not None:
            # twisted.web and prometheus_client cost about 5 MiB of a broker
            # that serves no HTTP; they are loaded only for one that does.
            from metamorphosis.broker.web.site import BrokerHttp

            self.http = BrokerHttp(self, httpEndpoint)

    def _fsyncsInThreads(self):
        # The group commit fsyncs running in a pool thread (IFsync), which
        # a polling reactor would keep from the GIL; none before the store
        # chose its provider.
        fsync = self.storeManager.fsync
        return 0 if fsync is None else fsync.roundsInThreads

    def addListener(self, listener):
        """
        Also accept connections on C{listener} (a L{Listener}, for instance
        a TLS one): the same broker answers them.  Listeners listen in the
        order added, after the stores and transactions are ready.
        """
        if self.running:
            raise RuntimeError("add listeners before the broker starts")
        self.listeners.append(listener)

    def addService(self, beside):
        """
        Run C{beside} (an L{IService}) while the broker serves: it starts
        once the broker listens and is registered, in the order added, and
        stops, in reverse order, before the broker leaves ZooKeeper.
        """
        if self.running:
            raise RuntimeError("add services before the broker starts")
        self.services.append(beside)

    def startService(self):
        service.Service.startService(self)
        # Once the reactor runs, its signal handlers are in place.
        self.reactor.callWhenRunning(self._guardTerminate)
        self.started = defer.ensureDeferred(self._start())
        self.started.addErrback(self._startFailed)

    async def _start(self):
        # 0. The HTTP endpoint, first, so that /health answers while the
        # stores recover.
        if self.http is not None:
            await self.http.listen()
        # 1. and 2.: the stores, then the transactions that refer to them.
        await defer.maybeDeferred(self.storeManager.startService)
        self.factory.keepDiskAwake = self.storeManager.fsync.keepAwake
        await defer.maybeDeferred(self.transactions.startService)
        # 3. Listen.
        for listener in self.listeners:
            self.ports[listener.name] = port = await listener.endpoint.listen(self.factory)
            address = port.getHost()
            self.log.info("MetaQ broker {id} listening on {address} ({name}: {kind})",
                          id=self.config.brokerId, name=listener.name,
                          address=hostPort(address),
                          kind="TLS" if listener.tls else "plain")
        plain, tls = plainAndTLS(self.listeners)
        self.port = self.ports[(plain or tls).name]
        self.stats.port = self.port.getHost().port
        # 4. Advertise the bound addresses.
        if self.zookeeper is not None:
            for topic in self.storeManager.topics():
                self.zookeeper.registerTopic(topic)
            if tls is not None:
                self.zookeeper.setTLSAddress(self.ports[tls.name].getHost().port)
            self.zookeeper.setBrokerAddress(self.stats.port)
            await defer.maybeDeferred(self.zookeeper.startService)
        # 5. What runs beside a serving broker.
        for beside in self.services:
            await defer.maybeDeferred(beside.startService)
        if self.config.path is not None:
            self._previousHangup = signal.signal(signal.SIGHUP, self._hangup)
        return self.port

    def _startFailed(self, failure):
        self.log.failure("The broker could not start", failure)
        if self.reactor.running:
            self.reactor.stop()
        return failure

    def _hangup(self, signum, frame):
        self.reactor.callFromThread(self.reloadTopics)

    def _guardTerminate(self):
        """
        Wrap the reactor's own SIGTERM handler (twistd's), which stops the
        reactor: a second SIGTERM while the broker drains its connections
        would have it stop a reactor that is stopping, a critical traceback
        in the log.
        """
        terminate = signal.getsignal(signal.SIGTERM)
        if callable(terminate) and self.running and self._guarded is None:
            self._guarded = self._firstTerminate = terminate
            signal.signal(signal.SIGTERM, self._terminate)

    def _terminate(self, signum, frame):
        first, self._firstTerminate = self._firstTerminate, None
        if first is not None:
            first(signum, frame)
        else:
            self.reactor.callFromThread(
                self.log.info, "Received SIGTERM again: already stopping (SIGKILL ends "
                "the broker at once; nothing acknowledged is lost)")

    def reloadTopics(self):
        """
        Re-read the topic sections of the configuration file; existing
        partitions keep being served, new topics are registered in
        ZooKeeper. A bad file is logged and changes nothing.
        """
        try:
            changed = reloadTopics(self.config)
        except ConfigError as e:
            self.log.error("Reload failed, keeping the old topics: {error}", error=errorText(e))
            return []
        self.log.info("Reloaded topics; new or changed: {topics}", topics=changed)
        if self.zookeeper is not None:
            self.zookeeper.reloadConfig(self.config)
        return changed

    async def _stop(self):
        if self._previousHangup is not None:
            signal.signal(signal.SIGHUP, self._previousHangup)
            self._previousHangup = None
        # 5. The services beside the broker, last started first stopped.
        for beside in reversed(self.services):
            if beside.running:
                await defer.maybeDeferred(beside.stopService)
        # 4. Leave ZooKeeper, so that clients stop choosing this broker
        # while it still answers them.
        if self.zookeeper is not None and self.zookeeper.running:
            await defer.maybeDeferred(self.zookeeper.stopService)
        # 3. Stop listening; answer what was received (a stored put gets
        # its reply, so its client does not send it again), then close.
        for name in list(self.ports):
            await defer.maybeDeferred(self.ports.pop(name).stopListening)
        await self.factory.drain(self.config.shutdownDrainSeconds, self.reactor)
        # 2. and 1.: the transactions, then the stores (flushed and closed).
        if self.transactions.running:
            await defer.maybeDeferred(self.transactions.stopService)
        if self.storeManager.running:
            await defer.maybeDeferred(self.storeManager.stopService)
        # 0. The HTTP endpoint, last.
        if self.http is not None:
            await self.http.stop()
        if self._guarded is not None:
            if signal.getsignal(signal.SIGTERM) == self._terminate:
                signal.signal(signal.SIGTERM, self._guarded)
            self._guarded = None

    def stopService(self):
        service.Service.stopService(self)
        starting = self.started
        if starting is None or starting.called:
            return defer.ensureDeferred(self._stop())
        # Still starting: stop once the start is over, whatever its outcome.
        stopping = defer.Deferred()
        starting.addBoth(lambda _: defer.ensureDeferred(self._stop()).chainDeferred(stopping))
        return stopping


class Options(usage.Options):
    """
    Command line of C{twistd metaq}.
    """

    synopsis = "[options]"
    longdesc = (
        "Run a MetaQ broker. Without --config it runs standalone: port 8123, "
        "data under ./data, no ZooKeeper, any topic accepted."
    )
    optParameters = [
        ["config", "c", None, "MetaQ server.ini to run with."],
        ["port", "p", None,
         "Endpoint to listen on, e.g. tcp:8123:interface=127.0.0.1 "
         "(default: the [listeners] of the config, else tcp:<serverPort>); "
         "a bare number means tcp:<number>."],
        ["data-dir", "d", None, "Data directory (overrides dataPath of every topic)."],
        ["broker-id", None, None, "Broker id (overrides brokerId)."],
        ["host-name", None, None, "Host name registered in ZooKeeper (overrides hostName)."],
        ["zookeeper", "z", None,
         "ZooKeeper connect string; enables registration (overrides zk.zkConnect)."],
        ["replication", "r", None,
         "Replication mode: gregor, samsa or metaslave, optionally =FILE of its "
         "properties (default: the samsa_master, gregor_slave or async_slave "
         ".properties file beside --config, if any; see docs/ha.md)."],
        ["idle-timeout", None, str(IDLE_TIMEOUT),
         "Seconds without I/O after which a connection is closed."],
        ["http", None, None,
         "Endpoint of the HTTP metrics, health and dashboard server, e.g. "
         "tcp:8120:interface=127.0.0.1, or 'none' (default: tcp:<dashboardHttpPort> "
         "when the config sets it, else none)."],
    ]

    def __init__(self):
        usage.Options.__init__(self)
        self["listen"] = []

    def opt_listen(self, description):
        """
        Another endpoint to listen on, e.g. ssl:8443:privateKey=key.pem
        (repeatable; with --listen or --port the [listeners] of the config
        are not used). See docs/security.md.
        """
        self["listen"].append(description)

    def postOptions(self):
        """
        Build the broker's configuration from the file and the overrides;
        every mistake is a L{usage.UsageError}, which C{twistd} prints with
        the usage text instead of a traceback.
        """
        from twisted.internet import reactor

        try:
            config = (loadConfig(self["config"]) if self["config"] else standaloneConfig())
        except ConfigError as e:
            raise usage.UsageError(f"bad configuration: {e}")
        if self["broker-id"] is not None:
            config.brokerId = self._number("broker-id", int)
        if self["host-name"]:
            config.hostName = self["host-name"]
        if self["data-dir"]:
            config.dataPath = self["data-dir"]
            if config.dataLogPath is None:
                config.dataLogPath = self["data-dir"]
            for topic in config.topics.values():
                topic.dataPath = self["data-dir"]
        if self["zookeeper"]:
            config.zookeeper.zkConnect = self["zookeeper"]
            config.zookeeper.zkEnable = True
        try:
            self.replication = replicationFor(self["config"], self["replication"])
            if self.replication is not None:
                self.replication.configure(config)
        except ReplicationConfigError as e:
            raise usage.UsageError(f"bad replication configuration: {e}")
        self["idle-timeout"] = self._number("idle-timeout", float)
        if self["idle-timeout"] <= 0:
            raise usage.UsageError("--idle-timeout must be a positive number of seconds")
        port = self["port"]
        if port is not None and port.isdigit():
            port = f"tcp:{port}"
        self["port"] = port
        http = self["http"]
        if http is None and config.dashboardHttpPort is not None:
            http = f"tcp:{config.dashboardHttpPort}"
        if http is not None and http.isdigit():
            http = f"tcp:{http}"
        self["http"] = None if http in (None, "none") else http
        self.listeners = listenerDescriptions(config, port, self["listen"])
        for _, description in self.listeners:
            if not isTLS(description):
                # TLS ones load files: they are built by makeService.
                self.endpointFor(description, reactor)
        self.httpEndpoint = None if self["http"] is None else self.endpointFor(self["http"], reactor)
        try:
            os.makedirs(config.dataPath, exist_ok=True)
        except OSError as e:
            raise usage.UsageError(f"cannot use the data directory {config.dataPath!r}: {e.strerror}")
        self.metaConfig = config

    def endpointFor(self, description, reactor):
        """
        The server endpoint a C{--http}-like string describes.

        @raise usage.UsageError: for a description Twisted cannot parse.
        """
        try:
            return endpoints.serverFromString(reactor, description)
        except (ValueError, KeyError, TypeError) as e:
            raise usage.UsageError(f"bad endpoint {description!r}: {e}")

    def _number(self, name, kind):
        try:
            return kind(self[name])
        except ValueError:
            raise usage.UsageError(f"--{name} must be a number, not {self[name]!r}")


def listenerDescriptions(config, port=None, listen=()):
    """
    The C{(name, endpoint string)} pairs the broker listens on: C{--port}
    and C{--listen} if given, else the C{[listeners]} section, else
    C{tcp:<serverPort>}.

    @raise usage.UsageError: ZooKeeper registration is on and there is no
        plain listener, so no address could be registered for Java clients.
    """
    given = ([("port", port)] if port else []) + [
        (f"listen{n}", description) for n, description in enumerate(listen, 1)
    ]
    listeners = given or config.listeners or [("plain", f"tcp:{config.serverPort}")]
    zk = config.zookeeper
    if zk.zkEnable and zk.zkConnect and all(isTLS(d) for _, d in listeners):
        raise usage.UsageError(
            "bad configuration: ZooKeeper registration needs one plain listener "
            "(its address is what Java clients read); see docs/security.md"
        )
    return listeners


def zookeeperService(config):
    """
    The ZooKeeper registration service for C{config}, or L{None} when
    registration is off (C{zk.zkEnable=false} or no connect string).
    """
    zk = config.zookeeper
    if not zk.zkEnable or not zk.zkConnect:
        return None
    return BrokerZooKeeper(config, slaveId=config.slaveId)


def makeService(options):
    from twisted.internet import reactor

    config = options.metaConfig
    try:
        # Here rather than in postOptions: it loads key and certificate files.
        listeners = buildListeners(reactor, options.listeners)
    except ListenerError as e:
        raise SystemExit(f"metaq: bad listener: {e}")
    return BrokerService(
        config,
        listeners,
        reactor,
        zookeeper=zookeeperService(config),
        idleTimeout=options["idle-timeout"],
        replication=options.replication,
        httpEndpoint=options.httpEndpoint,
    )
