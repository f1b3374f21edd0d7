"""
Consumer group membership in ZooKeeper and partition rebalancing
(docs/zookeeper.md, Java's C{ConsumerZooKeeper} and its
C{ZKLoadRebalanceListener}).

The znodes and their data are Java's, so Python and Java consumers share a
group: each registers C{<root>/consumers/<group>/ids/<group>_<uuid>}, reads
the same members and partitions, runs the same strategy and claims its
share with ephemeral C{owners/<topic>/<partition>} znodes.  ZooKeeper is
reached through kazoo, whose blocking calls run in threads; kazoo's
watches and session events are handed to the reactor thread.
"""

import json
import os
import random
import socket
import uuid
from dataclasses import dataclass, field

from kazoo.exceptions import KazooException, NodeExistsError, NoNodeError
from kazoo.protocol.states import KazooState
from twisted.internet import defer, task, threads
from twisted.logger import Logger
from twisted.python.failure import Failure

from metamorphosis.client.partition import Partition
from metamorphosis.client.strategies import javaSorted
from metamorphosis.logfields import errorText

MAX_REBALANCE_ATTEMPTS = 7
"""Java's C{MAX_N_RETRIES}."""


def localHost():
    """
    This host's address as Java's C{RemotingUtils.getLocalHost} picks it:
    the first non-loopback IPv4 address of the host name, else 127.0.0.1.
    """
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    except OSError:
        infos = []
    for info in infos:
        address = info[4][0]
        if not address.startswith("127."):
            return address
    return "127.0.0.1"


def consumerUUID(consumerId=None, host=None):
    """
    The id part of a consumer's registration: C{consumerId} if configured,
    else C{<ip>-<pid>-<random uuid>} as Java 1.4.6 makes it.
    """
    if consumerId:
        return consumerId
    return "%s-%d-%s" % (host or localHost(), os.getpid(), uuid.uuid4())


@dataclass(frozen=True)
class Cluster:
    """
    The brokers in ZooKeeper: broker id to master URL, broker id to slave
    URLs (Java's C{Cluster}).
    """

    masters: dict = field(default_factory=dict)
    slaves: dict = field(default_factory=dict)

    def brokerFor(self, brokerId):
        """
        Where to fetch a partition of C{brokerId}: the master if there is
        one, else a random slave, else L{None}
        (C{Cluster.getBrokerRandom}).
        """
        master = self.masters.get(brokerId)
        if master:
            return master
        slaves = self.slaves.get(brokerId)
        return random.choice(slaves) if slaves else None


class GroupMembership:
    """
    One consumer's membership of its group.

    @param consumer: the consumer; gives C{group}, C{config}, C{topics()}
        (the subscribed topics), C{strategy}, C{loadOffset(topic,
        partition)}, C{stopFetching()}, C{commitOffsets()} and
        C{startFetching(requests)} where requests are C{(brokerUrl,
        PartitionOffset)} pairs.
    @param client: a started C{KazooClient}.
    """

    log = Logger()

    #: Whether the consumer connects over TLS, so reads the brokers' TLS
    #: addresses (C{tls-master}, C{tls-slave<n>}).
    tls = False

    def __init__(self, consumer, client, root="/meta", reactor=None, host=None):
        if reactor is None:
            from twisted.internet import reactor
        self.consumer = consumer
        self.client = client
        self.root = "/" + root.strip("/") if root.strip("/") else ""
        self.reactor = reactor
        group = consumer.group
        self.consumerId = "%s_%s" % (group, consumerUUID(consumer.config.consumerId, host))
        self.groupPath = "%s/consumers/%s" % (self.root, group)
        self.idsPath = self.groupPath + "/ids"
        self.registry = {}
        self._resetState()
        self._rebalancing = None
        self._again = False
        self._stopped = False
        self._sessionLost = False
        self.rebalanceCount = 0

    @property
    def syncTime(self):
        return self.consumer.config.zkSyncTimeMs / 1000.0

    def _resetState(self):
        self.registry = {}
        self._oldConsumers = {}
        self._oldPartitions = {}
        self._oldCluster = Cluster()

    def ownedOffsets(self):
        """
        The L{PartitionOffset}s of every partition this consumer owns.
        """
        return [info for infos in self.registry.values() for info in infos.values()]

    # -- registration -----------------------------------------------------

    def register(self):
        """
        Register in the group, watch members, partitions and brokers, and
        run the first rebalance.
        """
        return defer.ensureDeferred(self._register())

    async def _register(self):
        await threads.deferToThread(self._registerNode)
        self.client.add_listener(self._sessionEvent)
        watched = [self.idsPath, "%s/brokers/ids" % (self.root,)]
        watched += ["%s/brokers/topics-sub/%s" % (self.root, t) for t in self.consumer.topics()]
        await threads.deferToThread(self._watch, watched)
        await self.rebalance()

    def _registerNode(self):
        self.client.ensure_path(self.idsPath)
        data = ",".join(self.consumer.topics()).encode("utf-8")
        path = "%s/%s" % (self.idsPath, self.consumerId)
        try:
            self.client.create(path, data, ephemeral=True)
        except NodeExistsError:
            # Re-creation after a lost connection: fine if it is ours.
            existing, _ = self.client.get(path)
            if existing != data:
                raise

    def _watch(self, paths):
        for path in paths:
            self.client.ensure_path(path)
            self.client.ChildrenWatch(path, self._childrenChanged)

    def _childrenChanged(self, children):
        # In a kazoo thread.
        if self._stopped:
            return False
        self.reactor.callFromThread(self.rebalance)

    def _sessionEvent(self, state):
        # In a kazoo thread; must not block.
        if state == KazooState.LOST:
            self._sessionLost = True
        elif state == KazooState.CONNECTED and self._sessionLost:
            self._sessionLost = False
            self.reactor.callFromThread(self._newSession)

    def _newSession(self):
        """
        The session expired: our ephemeral nodes are gone.  Register
        again and rebalance from scratch (Java's C{resetState}).
        """
        return defer.ensureDeferred(self._registerAgain())

    async def _registerAgain(self):
        if self._stopped:
            return
        self.log.warn("ZooKeeper session of {id} expired; registering again", id=self.consumerId)
        self._resetState()
        try:
            await threads.deferToThread(self._registerNode)
        except KazooException as e:
            self.log.warn("Registering {id} again failed: {error!r}", id=self.consumerId, error=errorText(e))
        await self.rebalance()

    def unregister(self):
        """
        Leave the group: stop watching, stop fetching, commit, release the
        partitions and delete the registration.
        """
        return defer.ensureDeferred(self._unregister())

    async def _unregister(self):
        self._stopped = True
        self.client.remove_listener(self._sessionEvent)
        if self._rebalancing is not None:
            await self._rebalancing
        await self.consumer.stopFetching()
        await self.consumer.commitOffsets()
        owned = [(t, p) for t, infos in self.registry.items() for p in infos]
        self.registry = {}
        await threads.deferToThread(self._release, owned, True)

    def _release(self, owned, withRegistration=False):
        paths = ["%s/owners/%s/%s" % (self.groupPath, t, p) for t, p in owned]
        if withRegistration:
            paths.append("%s/%s" % (self.idsPath, self.consumerId))
        for path in paths:
            try:
                self.client.delete(path)
            except NoNodeError:
                pass
            except Exception as e:
                self.log.error("Deleting {path} failed: {error}", path=path, error=errorText(e))

    # -- rebalancing ------------------------------------------------------

    def rebalance(self):
        """
        Rebalance now, or right after the rebalance in progress (events
        arriving meanwhile fold into one).

        @return: a Deferred firing when the rebalance this call asked for
            is done.
        """
        if self._stopped:
            return defer.succeed(None)
        if self._rebalancing is not None:
            self._again = True
            waiting = defer.Deferred()

            def relay(result):
                waiting.callback(None)
                return result
            self._rebalancing.addBoth(relay)
            return waiting
        self._again = False
        d = self._rebalancing = defer.ensureDeferred(self._syncedRebalance())

        def done(result):
            self._rebalancing = None
            if isinstance(result, Failure):
                self.log.failure("Rebalance of {id} failed", result, id=self.consumerId)
            if self._again and not self._stopped:
                return self.rebalance()
        d.addBoth(done)
        return d

    async def _syncedRebalance(self):
        for attempt in range(MAX_REBALANCE_ATTEMPTS):
            if self._stopped:
                return True
            self.log.info("Rebalancing consumer {id}, try #{n}", id=self.consumerId, n=attempt)
            try:
                done = await self._rebalanceOnce()
            except KazooException as e:
                self.log.warn("ZooKeeper error while rebalancing {id}: {error!r}",
                              id=self.consumerId, error=errorText(e))
                done = False
            except Exception:
                self.log.failure("Unexpected error while rebalancing {id}", id=self.consumerId)
                done = False
            if done:
                self.rebalanceCount += 1
                return True
            self.log.warn("Rebalance of {id} failed, try #{n}", id=self.consumerId, n=attempt)
            owned = [(t, p) for t, infos in self.registry.items() for p in infos]
            await threads.deferToThread(self._release, owned)
            self._resetState()
            await task.deferLater(self.reactor, self.syncTime, lambda: None)
            # Another event may arrive while we sleep; this attempt covers it.
            self._again = False
        self.log.error("Rebalance of {id} failed, finally", id=self.consumerId)
        return False

    def _readSnapshot(self):
        """
        Everything one rebalance needs, read from ZooKeeper (in a thread).
        A vanishing node raises C{NoNodeError}: another member is
        rebalancing; the attempt fails and is retried.
        """
        data, _ = self.client.get("%s/%s" % (self.idsPath, self.consumerId))
        myTopics = [t for t in data.decode("utf-8").split(",") if t]
        masters, slaves = {}, {}
        idsRoot = "%s/brokers/ids" % (self.root,)
        # A TLS client reads the TLS addresses: tls-master, tls-slave<n>.
        prefix = "tls-" if self.tls else ""
        for child in self._children(idsRoot):
            try:
                brokerId = int(child)
            except ValueError:
                continue
            for node in self._children("%s/%s" % (idsRoot, child)):
                if node != prefix + "master" and not node.startswith(prefix + "slave"):
                    continue
                url = self._data("%s/%s/%s" % (idsRoot, child, node))
                if not url:
                    continue
                if node == prefix + "master":
                    masters[brokerId] = url
                else:
                    slaves.setdefault(brokerId, []).append(url)
        cluster = Cluster(masters, {k: sorted(v) for k, v in slaves.items()})
        consumers = {}
        for member in self.client.get_children(self.idsPath):
            memberData, _ = self.client.get("%s/%s" % (self.idsPath, member))
            for topic in memberData.decode("utf-8").split(","):
                if topic:
                    consumers.setdefault(topic, []).append(member)
        consumers = {t: javaSorted(c) for t, c in consumers.items()}
        partitions = {}
        for topic in myTopics:
            strings = set()
            topicPath = "%s/brokers/topics-sub/%s" % (self.root, topic)
            for node in self._children(topicPath):
                parts = node.split("-")
                if len(parts) != 2:
                    continue
                text = self._data("%s/%s" % (topicPath, node))
                if not text:
                    continue
                try:
                    numParts = int(json.loads(text)["numParts"])
                except (ValueError, KeyError, TypeError):
                    self.log.error("Ignoring {path}/{node}: not a broker's topic JSON: {text!r}",
                                   path=topicPath, node=node, text=text)
                    continue
                strings.update("%s-%d" % (parts[0], n) for n in range(numParts))
            if strings:
                partitions[topic] = javaSorted(strings)
        return myTopics, cluster, consumers, partitions

    def _children(self, path):
        try:
            return self.client.get_children(path)
        except NoNodeError:
            return []

    def _data(self, path):
        try:
            data, _ = self.client.get(path)
        except NoNodeError:
            return None
        return data.decode("utf-8") if data else None

    async def _rebalanceOnce(self):
        try:
            myTopics, cluster, consumers, partitions = await threads.deferToThread(
                self._readSnapshot)
        except NoNodeError as e:
            self.log.warn("Maybe another consumer is rebalancing now: {error}", error=errorText(e))
            return False
        relevant = [t for t in myTopics
                    if self._oldPartitions.get(t) != partitions.get(t)
                    or self._oldConsumers.get(t) != consumers.get(t)]
        if not relevant:
            if cluster != self._oldCluster:
                self.log.info("Brokers changed; restarting the fetches of {id}", id=self.consumerId)
                await self.consumer.stopFetching()
                await self._commit()
                self._startFetching(cluster)
                self._oldCluster = cluster
            return True
        await self.consumer.stopFetching()
        await self._commit()
        for topic in relevant:
            current = self.registry.setdefault(topic, {})
            members, topicPartitions = consumers.get(topic), partitions.get(topic)
            if not members or not topicPartitions:
                await threads.deferToThread(self._release, [(topic, p) for p in current])
                del self.registry[topic]
                continue
            mine = self.consumer.strategy.getPartitions(
                topic, self.consumerId, members, topicPartitions)
            gone = [p for p in current if str(p) not in mine]
            await threads.deferToThread(self._release, [(topic, p) for p in gone])
            for p in gone:
                del current[p]
            for text in mine:
                partition = Partition.fromString(text)
                if partition in current:
                    continue
                owned = await threads.deferToThread(self._own, topic, text)
                if not owned:
                    self.log.warn("Partition {topic}/{p} is still owned by another consumer",
                                  topic=topic, p=text)
                    return False
                current[partition] = await self.consumer.loadOffset(topic, partition)
        self._startFetching(cluster)
        self._oldPartitions = partitions
        self._oldConsumers = consumers
        self._oldCluster = cluster
        return True

    async def _commit(self):
        try:
            await self.consumer.commitOffsets()
        except Exception as e:
            self.log.warn("Committing offsets before rebalancing failed: {error!r}", error=errorText(e))

    def _own(self, topic, partition):
        path = "%s/owners/%s/%s" % (self.groupPath, topic, partition)
        data = self.consumerId.encode("utf-8")
        try:
            self.client.create(path, data, ephemeral=True, makepath=True)
        except NodeExistsError:
            try:
                existing, _ = self.client.get(path)
            except NoNodeError:
                return False
            return existing == data
        return True

    def _startFetching(self, cluster):
        requests = []
        for topic, infos in self.registry.items():
            for partition, info in infos.items():
                url = cluster.brokerFor(partition.brokerId)
                if url is None:
                    self.log.error("No broker for {topic}/{p}", topic=topic, p=str(partition))
                    continue
                requests.append((url, info))
        self.consumer.startFetching(requests)
