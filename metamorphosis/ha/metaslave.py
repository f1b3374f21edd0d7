"""
The asynchronous replication slave: MetaQ's C{metaslave} plugin
(docs/ha.md).

The slave is a plain broker, registered in ZooKeeper as
C{ids/<id>/slave<n>} with topics C{<id>-s<n>}, that pulls every partition of
its master with C{get} as consumer group C{slaveGroup} and appends what it
receives unchanged: the master's record bytes (same length, CRC, id, flag,
body) at the same offsets.  So a consumer's offset (and the C{msgId-offset}
value in ZooKeeper) is valid on either broker.

Where the Java slave re-encodes each message and appends it one by one, ours
appends the fetched buffer of complete records as it is, at the offset it
was fetched from (L{IMessageStore.appendRecords} with C{expectedOffset}): a
fetch can never land anywhere else, so the logs cannot diverge.

The replication offset of a partition is the local end of its log, as in
Java (C{SlaveOffsetStorage.load}): restarting the slave resumes where its
own data ends.  A partition the slave does not have yet starts at the
master's first offset (C{offset <t> <group> <p> 0}).

The master is found, and followed, through ZooKeeper: its C{ids/<id>/master}
node gives its address, C{topics-sub/<t>/<id>-m} its topics and partition
counts.  Both are re-read every L{MasterFollower.rescanSeconds}, so new
topics and partitions are replicated as they appear, a master that moves or
restarts is followed, and while there is no master the pullers idle.
"""

import json
import os

from kazoo.exceptions import NoNodeError
from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from zope.interface import implementer

from metamorphosis import zk
from metamorphosis.broker.address import localHost
from metamorphosis.broker.store.errors import OffsetMismatch
from metamorphosis.client.membership import consumerUUID
from metamorphosis.ha import failover
from metamorphosis.ha.interfaces import IReplication
from metamorphosis.ha.link import NotConnected, PeerLink, RequestTimeout
from metamorphosis.logfields import errorText
from metamorphosis.protocol.commands import GetCommand, OffsetCommand, ResultCommand, StatsCommand, ValueCommand
from metamorphosis.protocol.records import InvalidRecord, decodeRecords
from metamorphosis.protocol.status import MOVED, NOT_FOUND, OK

#: The fetch size of the Java slave's subscriptions.
MAX_SIZE = 1024 * 1024

#: Java C{Long.MAX_VALUE}: an C{offset} query with it answers the master's
#: high-water mark.
LONG_MAX = 2**63 - 1



def _sections(text):
    """
    Split ini text into C{(header, text)} chunks, the part before the first
    section header having header L{None}.
    """
    chunks, header, lines = [], None, []
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            chunks.append((header, "".join(lines)))
            header, lines = stripped[1:-1].strip(), []
        lines.append(line)
    chunks.append((header, "".join(lines)))
    return chunks


def _isTopic(header):
    return header is not None and header.startswith("topic=")


def replaceTopicSections(path, masterText):
    """
    Make the C{[topic=...]} sections of the file at C{path} those of
    C{masterText} (the master's C{server.ini}), keeping the other sections;
    written to a temporary file renamed over C{path}.

    @return: whether the topic sections differed.
    """
    with open(path, "rb") as f:
        own = f.read().decode("utf-8")
    master = masterText.decode("utf-8") if isinstance(masterText, bytes) else masterText
    masterTopics = [text for header, text in _sections(master) if _isTopic(header)]
    ownChunks = _sections(own)
    if [text.strip() for header, text in ownChunks if _isTopic(header)] == [t.strip() for t in masterTopics]:
        return False
    kept = [text for header, text in ownChunks if not _isTopic(header)]
    if kept and not kept[-1].endswith("\n"):
        kept[-1] += "\n"
    temporary = path + ".master"
    with open(temporary, "w", encoding="utf-8") as f:
        f.write("".join(kept + masterTopics))
    os.replace(temporary, path)
    return True


def parseUrl(url):
    """
    C{meta://host:port} to C{(host, port)}.
    """
    rest = url.split("://", 1)[-1]
    host, _, port = rest.rpartition(":")
    return host.strip("[]"), int(port)


class PartitionPuller:
    """
    Replicates one partition of the master into the local store.

    @ivar offset: the next master offset to fetch, always the local end.
    @ivar masterOffset: the master's high-water mark as last seen.
    """

    log = Logger()

    def __init__(self, slave, topic, partition, store):
        self.slave = slave
        self.topic = topic
        self.partition = partition
        self.store = store
        self.offset = store.minOffset + store.sizeInBytes
        self.masterOffset = self.offset
        self.replicatedMessages = 0
        self._running = False
        self._wake = None
        self.done = None

    @property
    def lag(self):
        """
        Bytes the master has that this slave has not yet stored.
        """
        return max(0, self.masterOffset - self.offset)

    def start(self):
        self._running = True
        self.done = defer.ensureDeferred(self._run())
        self.done.addErrback(lambda f: self.log.failure("Replicating {topic}-{partition} stopped", f, topic=self.topic, partition=self.partition))

    def stop(self):
        self._running = False
        self.wake()
        return self.done

    def wake(self):
        """
        Cut the current back-off short (the master came back).
        """
        if self._wake is not None and not self._wake.called:
            self._wake.cancel()

    async def _sleep(self, seconds):
        if seconds <= 0:
            return
        self._wake = deferLater(self.slave.reactor, seconds, lambda: None)
        try:
            await self._wake
        except defer.CancelledError:
            pass
        finally:
            self._wake = None

    async def _run(self):
        maxDelay = self.slave.config.slaveMaxDelayInMills / 1000.0
        delay = 0.0
        while self._running:
            await self._sleep(delay)
            if not self._running:
                break
            try:
                delay = await self._fetchOnce(delay, maxDelay)
            except (NotConnected, RequestTimeout) as e:
                self.log.debug("Fetching {topic}-{partition}: {error}", topic=self.topic, partition=self.partition, error=errorText(e))
                delay = maxDelay
            except Exception as e:
                self.log.warn(
                    "Replicating {topic}-{partition} at {offset} failed: {error}; retrying",
                    topic=self.topic,
                    partition=self.partition,
                    offset=self.offset,
                    error=errorText(e),
                )
                delay = maxDelay

    async def _fetchOnce(self, delay, maxDelay):
        """
        One C{get} and what follows from its reply.

        @return: the pause before the next fetch: none after data, a growing
            back-off (C{+maxDelay/10}, as the Java consumer) while there is
            nothing new, the maximum after an error.
        """
        group = self.slave.config.slaveGroup
        reply = await self.slave.request(
            lambda opaque: GetCommand(self.topic, group, self.partition, self.offset, MAX_SIZE, opaque)
        )
        if isinstance(reply, ValueCommand):
            return await self._store(reply.data, maxDelay)
        code, text = reply.code, reply.body.decode("utf-8", "replace")
        if code == NOT_FOUND:
            if text.startswith("Could not find message at position"):
                self.masterOffset = max(self.masterOffset, self.offset)
            return min(delay + maxDelay / 10, maxDelay)
        if code == MOVED:
            if text.isdigit() and int(text) < self.offset:
                problem = "this slave holds more than the master (did the master lose data?)"
            else:
                problem = "the data in between is gone on the master and cannot be replicated"
            self.log.error(
                "Master moved {topic}-{partition} from {offset} to {moved}: {problem}; "
                "this partition stays at {offset}",
                topic=self.topic,
                partition=self.partition,
                offset=self.offset,
                moved=text,
                problem=problem,
            )
            return maxDelay
        self.log.warn(
            "Master answered get {topic}-{partition} at {offset} with {code} {text}",
            topic=self.topic,
            partition=self.partition,
            offset=self.offset,
            code=code,
            text=text,
        )
        return maxDelay

    async def _store(self, data, maxDelay):
        try:
            fetched, consumed = decodeRecords(data, verify=True)
        except InvalidRecord as e:
            self.log.error(
                "Master sent a corrupt record in {topic}-{partition} at {offset}: {error}",
                topic=self.topic,
                partition=self.partition,
                offset=self.offset,
                error=errorText(e),
            )
            return maxDelay
        if not fetched:
            self.log.error(
                "A record of {topic}-{partition} at {offset} is larger than the {size} bytes a fetch may carry",
                topic=self.topic,
                partition=self.partition,
                offset=self.offset,
                size=MAX_SIZE,
            )
            return maxDelay
        try:
            await self.store.appendRecords(data[:consumed], expectedOffset=self.offset)
        except OffsetMismatch as e:
            self.log.error("Local {topic}-{partition} diverged: {error}", topic=self.topic, partition=self.partition, error=errorText(e))
            self.offset = self.store.minOffset + self.store.sizeInBytes
            return maxDelay
        self.offset += consumed
        self.masterOffset = max(self.masterOffset, self.offset)
        self.replicatedMessages += len(fetched)
        self.slave.stored(self.topic, self.partition, len(fetched), consumed)
        return 0.0

    async def refreshMasterOffset(self):
        """
        Ask the master for its high-water mark (for the lag statistic).
        """
        reply = await self.slave.request(
            lambda opaque: OffsetCommand(self.topic, self.slave.config.slaveGroup, self.partition, LONG_MAX, opaque)
        )
        if isinstance(reply, ResultCommand) and reply.code == OK:
            self.masterOffset = int(reply.body)


class AsyncSlaveService(service.Service):
    """
    Follows the master in ZooKeeper and runs one L{PartitionPuller} per
    master partition.

    @param config: the L{metamorphosis.ha.config.AsyncSlaveConfig}.
    @param metaConfig: the broker's L{metamorphosis.broker.config.MetaConfig}.
    @param storeManager: the broker's store manager.
    @param onStored: called with C{(topic, partition, messages, bytes)}
        after each replicated batch (statistics, topic registration).
    @param ownUrl: a callable giving this broker's C{meta://host:port} once
        known (L{None} before), which a failover record may name.
    @param onConfigChanged: called after C{autoSyncMasterConfig} rewrote the
        topic sections of the slave's C{server.ini}, to reload them.
    @param onPromoted: called (may return a Deferred) once replication has
        stopped because this slave is to become the master
        (L{metamorphosis.ha.failover}).
    @ivar promoted: whether that happened.
    """

    log = Logger()

    #: Seconds between two reads of the master's ZooKeeper registration.
    rescanSeconds = 1.0

    #: Seconds between two queries of the master's high-water marks (for
    #: the lag statistic).
    lagSeconds = 0.2

    def __init__(
        self,
        config,
        metaConfig,
        storeManager,
        onStored=None,
        reactor=None,
        requestTimeout=10.0,
        ownUrl=lambda: None,
        onPromoted=None,
        onConfigChanged=None,
    ):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.config = config
        self.metaConfig = metaConfig
        self.storeManager = storeManager
        self.onStored = onStored
        self.requestTimeout = requestTimeout
        self.paths = zk.ZkPaths(metaConfig.zookeeper.zkRoot)
        self.pullers = {}
        self.masterUrl = None
        self.link = None
        self.client = None
        self.ownUrl = ownUrl
        self.onPromoted = onPromoted
        self.promoted = False
        self.fence = None
        self.candidate = failover.Candidate(
            failover.recordPath(self.paths, metaConfig.brokerId),
            config.autoPromote,
            config.promoteAfterMs / 1000.0 + config.slaveId,
            ownUrl,
            self.reactor,
        )
        self._refusedTopics = set()
        self._registeredTopics = None
        self._masterChecksum = None
        self.onConfigChanged = onConfigChanged
        self.consumerId = "%s_%s" % (
            config.slaveGroup,
            consumerUUID(host=metaConfig.hostName or localHost()),
        )
        self._loop = self._lagLoop = None
        self._stopping = False

    # what the pullers use

    def request(self, makeCommand):
        if self.link is None:
            return defer.fail(NotConnected("no master"))
        return self.link.request(makeCommand, self.requestTimeout)

    def stored(self, topic, partition, messages, size):
        if self.onStored is not None:
            self.onStored(topic, partition, messages, size)

    @property
    def lag(self):
        return sum(puller.lag for puller in self.pullers.values())

    # lifetime

    def startService(self):
        service.Service.startService(self)
        self._stopping = False
        self._loop = defer.ensureDeferred(self._follow())
        self._loop.addErrback(self._loopFailed)
        self._lagLoop = defer.ensureDeferred(self._measureLag())
        self._lagLoop.addErrback(self._loopFailed)

    def _loopFailed(self, failure):
        if not failure.check(defer.CancelledError):
            self.log.failure("Following the master stopped", failure)

    async def stopService(self):
        service.Service.stopService(self)
        self._stopping = True
        if self.fence is not None and self.fence.running:
            self.fence.stopService()
        for loop in (self._loop, self._lagLoop):
            if loop is not None:
                loop.cancel()
        await defer.DeferredList([puller.stop() for puller in self.pullers.values()])
        self.pullers.clear()
        if self.link is not None:
            await self.link.stop()
            self.link = None
        if self.client is not None:
            client, self.client = self.client, None
            await zk.disconnect(client, self.reactor)

    async def _follow(self):
        zkConfig = self.metaConfig.zookeeper
        while not self._stopping and self.client is None:
            try:
                self.client = await zk.connect(zkConfig, reactor=self.reactor)
            except defer.CancelledError:
                raise
            except Exception as e:
                self.log.warn("Cannot reach ZooKeeper {connect}: {error}; retrying", connect=zkConfig.zkConnect, error=errorText(e))
                await deferLater(self.reactor, self.rescanSeconds, lambda: None)
        while not self._stopping:
            try:
                if await self._scan():
                    break
            except defer.CancelledError:
                raise
            except Exception as e:
                self.log.warn("Reading the master's registration failed: {error}", error=errorText(e))
            await deferLater(self.reactor, self.rescanSeconds, lambda: None)
        else:
            return
        await self._becomeMaster()

    async def _becomeMaster(self):
        """
        Stop replicating for good and hand over to L{onPromoted}.
        """
        self.promoted = True
        self._lagLoop.cancel()
        await defer.DeferredList([puller.stop() for puller in self.pullers.values()])
        self.pullers.clear()
        if self.link is not None:
            link, self.link = self.link, None
            await link.stop()
        if self._registeredTopics is not None:
            path = "%s/%s/ids/%s" % (self.paths.consumersPath, self.config.slaveGroup, self.consumerId)
            try:
                await self._zk("delete_async", path)
            except NoNodeError:
                pass
        self.log.warn("Promoted: broker {brokerId} slave {slaveId} becomes the master", brokerId=self.metaConfig.brokerId, slaveId=self.config.slaveId)
        if self.onPromoted is not None:
            await defer.maybeDeferred(self.onPromoted)

    async def _measureLag(self):
        while not self._stopping:
            for puller in list(self.pullers.values()):
                try:
                    await puller.refreshMasterOffset()
                except defer.CancelledError:
                    # stopService cancelled us: no timer left behind.
                    raise
                except Exception:
                    # No master now: the lag is as last known.
                    pass
            await deferLater(self.reactor, self.lagSeconds, lambda: None)

    def _zk(self, method, *args):
        return zk.deferKazoo(getattr(self.client, method)(*args), self.reactor)

    async def _scan(self):
        """
        Follow the master's registration once.

        @return: whether this slave is to become the master.
        """
        brokerId = self.metaConfig.brokerId
        try:
            data, _ = await self._zk("get_async", self.paths.brokerIdsPathOf(brokerId))
            masterUrl = data.decode("utf-8") if data else None
        except NoNodeError:
            masterUrl = None
        if await self.candidate.shouldPromote(self.client, masterUrl):
            return True
        if masterUrl != self.masterUrl:
            await self._masterChanged(masterUrl)
        if masterUrl is None:
            return False
        if self.config.autoSyncMasterConfig:
            await self._syncMasterConfig(brokerId)
        topics = await self._masterTopics(brokerId)
        for topic, numParts in topics.items():
            for partition in range(numParts):
                if (topic, partition) not in self.pullers:
                    await self._startPuller(topic, partition)
        await self._registerConsumer(sorted(topics))
        return False

    async def _syncMasterConfig(self, brokerId):
        """
        C{autoSyncMasterConfig}: when the master's C{master_config_checksum}
        changes, fetch its configuration (C{stats config}, 3 tries) and, if
        its topic sections differ from ours, write them into this slave's
        C{server.ini} and reload the topics (Java
        C{SubscribeHandler.tryReloadConfig}).  Unlike Java, which replaces
        the whole file with the master's, the slave keeps its own
        C{[system]} and C{[zookeeper]} sections (its port, data path...).
        """
        try:
            data, _ = await self._zk("get_async", self.paths.masterConfigChecksumPath(brokerId))
        except NoNodeError:
            return
        if data == self._masterChecksum or self.onConfigChanged is None:
            return
        for attempt in range(3):
            try:
                reply = await self.request(lambda opaque: StatsCommand("config", opaque))
            except Exception as e:
                self.log.warn("Fetching the master's config failed: {error}", error=errorText(e))
                continue
            if reply.code == OK:
                break
            self.log.warn("Fetching the master's config failed: {code} {text}", code=reply.code, text=reply.message)
        else:
            return
        changed = await deferToThread(replaceTopicSections, self.metaConfig.path, reply.body)
        self._masterChecksum = data
        if changed:
            self.log.info("Took the master's topic sections into {path}", path=self.metaConfig.path)
            self.onConfigChanged()

    async def _registerConsumer(self, topics):
        """
        Show the replicating consumer in ZooKeeper as the Java slave's
        consumer appears: C{consumers/<slaveGroup>/ids/<slaveGroup>_<ip>-<pid>-<uuid>}
        (ephemeral, data: the topics it pulls), without owner nodes or
        offsets (docs/zookeeper.md).
        """
        data = ",".join(topics).encode("utf-8")
        path = "%s/%s/ids/%s" % (self.paths.consumersPath, self.config.slaveGroup, self.consumerId)
        # Checked on every scan: the node goes with an expired session.
        if data == self._registeredTopics and await self._zk("exists_async", path) is not None:
            return
        try:
            await self._zk("set_async", path, data)
        except NoNodeError:
            await zk.ensurePath(self.client, path.rsplit("/", 1)[0], self.reactor)
            await self._zk("create_async", path, data, None, True)
        self._registeredTopics = data


    async def _masterChanged(self, masterUrl):
        self.log.info("Master of broker {brokerId} is now {url}", brokerId=self.metaConfig.brokerId, url=masterUrl)
        self.masterUrl = masterUrl
        if self.link is not None:
            link, self.link = self.link, None
            await link.stop()
        if masterUrl is None:
            return
        linkUrl = masterUrl
        if self.config.tls is not None:
            linkUrl = await self._masterTLSUrl()
            if linkUrl is None:
                self.log.warn("The master {url} registers no TLS listener (tls-master): "
                              "not replicating until it does", url=masterUrl)
                self.masterUrl = None
                return
        host, port = parseUrl(linkUrl)
        self.link = PeerLink(self.reactor, host, port, tls=self.config.tls)
        self.link.start()
        try:
            await self.link.whenConnected(failAfterFailures=1)
        except Exception as e:
            self.log.warn("Cannot connect to the master {url} yet: {error}", url=masterUrl, error=errorText(e))
        for puller in self.pullers.values():
            puller.wake()

    async def _masterTLSUrl(self):
        """
        The address of the master's TLS listener, or L{None}.
        """
        try:
            data, _ = await self._zk(
                "get_async", self.paths.tlsBrokerIdsPathOf(self.metaConfig.brokerId))
        except NoNodeError:
            return None
        return data.decode("utf-8") if data else None

    async def _masterTopics(self, brokerId):
        """
        Topic to partition count of the master: the topics under
        C{topics-sub} with a C{<id>-m} child (Java
        C{getPartitionsForSubTopicsFromMaster}).
        """
        master = self.paths.topicBrokerName(brokerId)
        try:
            topics = await self._zk("get_children_async", self.paths.brokerTopicsSubPath)
        except NoNodeError:
            return {}
        found = {}
        for topic in sorted(topics):
            try:
                data, _ = await self._zk("get_async", self.paths.brokerTopicsSubPathOf(topic, brokerId))
            except NoNodeError:
                continue
            try:
                found[topic] = int(json.loads(data.decode("utf-8"))["numParts"])
            except (ValueError, KeyError, TypeError, AttributeError):
                self.log.warn("Ignoring {topic}/{master}: unreadable data {data!r}", topic=topic, master=master, data=data)
        return found

    async def _startPuller(self, topic, partition):
        store = self.storeManager.getStore(topic, partition)
        if store is None:
            if not self.metaConfig.isLegalTopic(topic):
                if topic not in self._refusedTopics:
                    self._refusedTopics.add(topic)
                    self.log.error(
                        "The master serves {topic}, which this slave's server.ini does not accept: "
                        "not replicated (add the topic section to the slave)",
                        topic=topic,
                    )
                return
            start = await self._masterStart(topic, partition)
            store = self.storeManager.getOrCreateStore(topic, partition, start)
        puller = PartitionPuller(self, topic, partition, store)
        self.pullers[(topic, partition)] = puller
        self.log.info("Replicating {topic}-{partition} from offset {offset}", topic=topic, partition=partition, offset=puller.offset)
        puller.start()

    async def _masterStart(self, topic, partition):
        """
        Where a partition the slave does not have starts: the master's first
        offset (C{SlaveOffsetStorage.queryOffsetInMaster}); 0 if the master
        has no such partition yet.
        """
        reply = await self.request(
            lambda opaque: OffsetCommand(topic, self.config.slaveGroup, partition, 0, opaque)
        )
        if reply.code == OK:
            return int(reply.body)
        if reply.code == NOT_FOUND:
            return 0
        raise RuntimeError(
            "failed to query offset from %s, topic=%s, partition=%d, httpCode=%d"
            % (self.masterUrl, topic, partition, reply.code)
        )


@implementer(IReplication)
class MetaslaveReplication:
    """
    The async slave mode.
    """

    name = "metaslave"
    slave = True
    log = Logger()

    def __init__(self, config, reactor=None):
        self.config = config
        self.reactor = reactor
        self.service = None
        self.fence = None

    def configure(self, metaConfig):
        metaConfig.slaveId = self.config.slaveId
        self.log.info(
            "Replication: metaslave (async slave {slaveId}) pulling as group {group}",
            slaveId=self.config.slaveId,
            group=self.config.slaveGroup,
        )

    def install(self, factory):
        pass

    def makeService(self, broker):
        metaConfig = broker.config

        def replicated(topic, partition, messages, size):
            broker.stats.statsSlavePut(topic, "%d-%d" % (metaConfig.brokerId, partition), messages)
            broker.stats.statsMessageSize(topic, size)
            if broker.zookeeper is not None:
                broker.zookeeper.registerTopic(topic)

        registration = broker.zookeeper
        self.service = AsyncSlaveService(
            self.config,
            metaConfig,
            broker.storeManager,
            replicated,
            self.reactor,
            ownUrl=lambda: registration.brokerString if registration is not None else None,
            onPromoted=lambda: self._promoted(broker),
            onConfigChanged=broker.reloadTopics,
        )
        return self.service

    async def _promoted(self, broker):
        """
        Turn this broker into its broker id's master: registered as
        C{ids/<id>/master} with C{<id>-m} topics, fenced like any master.
        """
        registration = broker.zookeeper
        await registration.unregisterEverything()
        registration.slaveId = broker.config.slaveId = -1
        self.fence = self.service.fence = failover.installFence(broker)
        self.fence.startService()
        registration.registerEverything()

    def statsItems(self):
        if self.service is not None and self.service.promoted:
            return [("promoted", True)]
        lag = self.service.lag if self.service is not None else 0
        return [("replication_lag_bytes", lag)]

    def stateItems(self):
        return self.statsItems()

    def partitionLags(self):
        if self.service is None or self.service.promoted:
            return []
        return [(puller.topic, puller.partition, puller.lag)
                for puller in self.service.pullers.values()]
