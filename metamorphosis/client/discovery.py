"""
Where a producer finds the brokers and partitions of a topic.

L{ZooKeeperDiscovery} follows the brokers' registrations as the Java
C{ProducerZooKeeper} does (docs/zookeeper.md): the children of
C{<root>/brokers/topics-pub/<topic>} ending in C{-m} give the master brokers
and their partition counts, C{<root>/brokers/ids/<id>/master} their
addresses.  Every kazoo call runs in a thread; watches bring the changes back
to the reactor thread.  L{StaticDiscovery} is the C{meta://host:port} mode
without ZooKeeper.
"""

import json
from dataclasses import dataclass, field

from kazoo.exceptions import NodeExistsError, NoNodeError
from kazoo.protocol.states import KazooState
from twisted.internet import defer, threads
from twisted.logger import Logger
from zope.interface import implementer

from metamorphosis.client.interfaces import IBrokerDiscovery
from metamorphosis.client.partition import Partition
from metamorphosis.logfields import errorText
from metamorphosis.zk import ZkPaths


@dataclass(frozen=True)
class TopicView:
    """
    What is known of one topic: its master brokers (id -> URL) and its
    partitions, sorted numerically by (broker id, partition).
    """

    brokers: dict = field(default_factory=dict)
    partitions: tuple = ()

    def urls(self):
        return set(self.brokers.values())


class _Listeners:
    """
    The change listeners of a discovery, called on the reactor thread.
    """

    log = Logger()

    def __init__(self):
        self._listeners = []

    def addListener(self, listener):
        self._listeners.append(listener)

    def notify(self, topic):
        for listener in list(self._listeners):
            try:
                listener(topic)
            except Exception:
                self.log.failure("Broker change listener {listener!r} failed", listener=repr(listener))


@implementer(IBrokerDiscovery)
class ZooKeeperDiscovery(_Listeners):
    """
    Broker discovery through ZooKeeper.

    @param zookeeper: a started C{kazoo.client.KazooClient}.
    @param root: the MetaQ root (C{zk.zkRoot}, C{/meta} by default).
    @param tls: whether to read the brokers' TLS addresses
        (C{ids/<id>/tls-master}) instead of their plain ones.
    """

    log = Logger()

    retryInterval = 2.0

    def __init__(self, zookeeper, root="/meta", reactor=None, tls=False):
        super().__init__()
        self.tls = tls
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.zookeeper = zookeeper
        self.paths = ZkPaths(root)
        self._views = {}
        self._watchers = {}
        self._refreshing = set()
        self._waiting = {}
        self._dirty = set()
        self._sessionLost = False
        self._known = set()
        self._retries = {}
        zookeeper.add_listener(self._stateChanged)

    def _topicPath(self, topic):
        return "%s/%s" % (self.paths.brokerTopicsPubPath, topic)

    def _masterPath(self, brokerId):
        if self.tls:
            return self.paths.tlsBrokerIdsPathOf(brokerId)
        return self.paths.brokerIdsPathOf(brokerId)

    def publish(self, topic):
        if topic not in self._views:
            self._views[topic] = TopicView()
            # One watcher object per topic: kazoo keeps watchers in sets, so
            # re-registering it on every read does not multiply notifications.
            self._watchers[topic] = lambda event: self.reactor.callFromThread(self._refresh, topic)
            self._refresh(topic)
        return self._whenCurrent(topic)

    def _whenCurrent(self, topic):
        """
        @return: a Deferred of the caller's own that fires when the read in
            progress for C{topic} (and any read it causes) is done.
        """
        if topic not in self._refreshing:
            return defer.succeed(None)
        waiter = defer.Deferred()
        self._waiting.setdefault(topic, []).append(waiter)
        return waiter

    def _release(self, topic, failure=None):
        for waiter in self._waiting.pop(topic, []):
            if failure is None:
                waiter.callback(None)
            else:
                waiter.errback(failure)

    def unpublish(self, topic):
        self._views.pop(topic, None)
        self._watchers.pop(topic, None)
        self._dirty.discard(topic)
        self._known.discard(topic)
        retry = self._retries.pop(topic, None)
        if retry is not None:
            retry.cancel()

    def partitionsFor(self, topic):
        view = self._views.get(topic)
        return None if view is None else view.partitions

    def brokerUrlFor(self, topic, partition):
        view = self._views.get(topic)
        return None if view is None else view.brokers.get(partition.brokerId)

    def brokerUrls(self, topic):
        view = self._views.get(topic)
        return set() if view is None else view.urls()

    def stop(self):
        self.zookeeper.remove_listener(self._stateChanged)
        for topic in list(self._views):
            self.unpublish(topic)
        pending = [self._whenCurrent(topic) for topic in self._refreshing]
        return defer.DeferredList(pending, consumeErrors=True).addCallback(lambda _: None)

    def _stateChanged(self, state):
        # Called in a kazoo thread; must not block.  Watches die with the
        # session, so read everything again once a new session is up.
        if state == KazooState.LOST:
            self._sessionLost = True
        elif state == KazooState.CONNECTED and self._sessionLost:
            self._sessionLost = False
            self.reactor.callFromThread(self._refreshAll)

    def _retry(self, topic):
        del self._retries[topic]
        self._refresh(topic)

    def _refreshAll(self):
        for topic in list(self._views):
            self._refresh(topic)

    def _refresh(self, topic):
        """
        Read the topic again in a thread; a change arriving during a read
        causes one more read afterwards.  L{_whenCurrent} waits for it.
        """
        if topic not in self._views:
            return
        if topic in self._refreshing:
            self._dirty.add(topic)
            return
        self._refreshing.add(topic)
        reading = threads.deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), self._read, topic, self._watchers[topic]
        )

        def read(view):
            self._refreshing.discard(topic)
            if topic not in self._views:
                self._release(topic)
                return
            changed = view != self._views[topic] or topic not in self._known
            self._views[topic] = view
            self._known.add(topic)
            if changed:
                self.log.info(
                    "Topic {topic} is on brokers {brokers}, partitions {partitions}",
                    topic=topic,
                    brokers=view.brokers,
                    partitions=" ".join(map(str, view.partitions)),
                )
                self.notify(topic)
            if topic in self._dirty:
                self._dirty.discard(topic)
                self._refresh(topic)
            else:
                self._release(topic)

        def failed(failure):
            self._refreshing.discard(topic)
            self.log.warn(
                "Reading brokers of topic {topic} from ZooKeeper failed: {error}",
                topic=topic,
                error=failure.getErrorMessage() or failure.type.__name__,
            )
            if topic in self._known:
                # Keep the last view and try again later.
                if topic not in self._retries:
                    self._retries[topic] = self.reactor.callLater(
                        self.retryInterval, self._retry, topic
                    )
                self._release(topic)
            else:
                self.unpublish(topic)
                self._release(topic, failure)

        reading.addCallbacks(read, failed)

    def _read(self, topic, watcher):
        """
        Read one topic's brokers and partitions (in a thread).
        """
        zookeeper = self.zookeeper
        path = self._topicPath(topic)
        if zookeeper.exists(path) is None:
            _ensurePath(zookeeper, path)
        brokers = {}
        partitions = []
        for child in zookeeper.get_children(path, watch=watcher):
            brokerIdText, sep, role = child.rpartition("-")
            if role != "m" or not sep:
                continue
            try:
                brokerId = int(brokerIdText)
                data, _ = zookeeper.get("%s/%s" % (path, child))
                numParts = int(json.loads((data or b"").decode("utf-8"))["numParts"])
            except NoNodeError:
                continue
            except (ValueError, KeyError, TypeError) as e:
                self.log.warn(
                    "Ignoring bad registration {path}/{child}: {error}", path=path, child=child, error=errorText(e)
                )
                continue
            try:
                url, _ = zookeeper.get(self._masterPath(brokerId), watch=watcher)
            except NoNodeError:
                zookeeper.exists(self._masterPath(brokerId), watch=watcher)
                continue
            url = (url or b"").decode("utf-8").strip()
            if not url:
                continue
            brokers[brokerId] = url
            partitions.extend(Partition(brokerId, n) for n in range(numParts))
        return TopicView(brokers, tuple(sorted(partitions)))


def _ensurePath(zookeeper, path):
    """
    Create C{path} and its missing parents as persistent nodes without data
    (null, not empty), as zkclient's C{createPersistent(path, true)} does;
    blocking, for a thread.
    """
    prefix = ""
    for part in path.strip("/").split("/"):
        prefix += "/" + part
        try:
            zookeeper.create(prefix, None)
        except NodeExistsError:
            pass


@implementer(IBrokerDiscovery)
class StaticDiscovery(_Listeners):
    """
    Direct mode: one broker at a fixed C{meta://host:port} URL, no
    ZooKeeper.  A topic with a known partition count is spread over
    partitions C{0..n-1} by the selector (their broker id is C{brokerId});
    any other topic is sent with partition C{-1}, so the broker picks one,
    as the Java client does with C{serverUrl}.

    @param partitions: a mapping of topic name to its number of partitions.
    """

    def __init__(self, serverUrl, partitions=None, brokerId=0):
        super().__init__()
        self.serverUrl = serverUrl
        self.partitions = dict(partitions or {})
        self.brokerId = brokerId
        self._published = {}

    def publish(self, topic):
        if topic not in self._published:
            count = self.partitions.get(topic)
            if count is None:
                # Partition -1: the broker picks one, and the send result
                # names it on this broker.
                self._published[topic] = (Partition(self.brokerId, -1),)
            else:
                self._published[topic] = tuple(Partition(self.brokerId, n) for n in range(count))
            self.notify(topic)
        return defer.succeed(None)

    def unpublish(self, topic):
        self._published.pop(topic, None)

    def partitionsFor(self, topic):
        return self._published.get(topic)

    def brokerUrlFor(self, topic, partition):
        return self.serverUrl if topic in self._published else None

    def brokerUrls(self, topic):
        return {self.serverUrl} if topic in self._published else set()

    def stop(self):
        self._published.clear()
        return defer.succeed(None)
