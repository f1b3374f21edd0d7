"""
The service owning every partition store of the broker (Java
C{MessageStoreManager}, docs/storage.md).

At start it loads every C{<topic>-<partition>} directory of the global and
the per-topic data paths in a thread; afterwards it creates stores lazily on
the first put, runs one periodic flush per distinct C{unflushInterval} and
one retention job per distinct C{deleteWhen} schedule.
"""

import datetime
import os
import random

from twisted.application.service import Service
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    ensureDeferred,
    gatherResults,
)
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from metamorphosis.broker.store.cron import CronExpression, InvalidCronExpression
from metamorphosis.broker.store.errors import (
    IllegalTopic,
    OutOfDescriptors,
    TooManyTopics,
    WrongPartition,
)
from metamorphosis.broker.store.fsync import (
    AWAKE_FILE,
    chooseFsync,
    describeFsync,
    kernelFsyncOf,
    openAwakeFile,
)
from metamorphosis.broker.store.partition import MessageStore
from metamorphosis.broker.store.recovery import Finding, loadPartition
from metamorphosis.broker.store.retention import InvalidDeletePolicy, parseDeletePolicy
from metamorphosis.broker.store.verifier import SegmentVerifier
from metamorphosis.logfields import errorText
from metamorphosis.protocol.topics import isLegalTopic

# Sub-directories of a data path that belong to the broker, not to a topic.
_KNOWN_DIRECTORIES = {"transactions"}


def _partitionDirectories(dataPath, findings):
    """
    The C{(topic, partition, directory)} of every partition directory under
    C{dataPath}.  Runs in a thread.
    """
    found = []
    if not os.path.isdir(dataPath):
        return found
    for name in sorted(os.listdir(dataPath)):
        directory = os.path.join(dataPath, name)
        if not os.path.isdir(directory) or name in _KNOWN_DIRECTORIES:
            continue
        topic, dash, number = name.rpartition("-")
        if dash and topic and not isLegalTopic(topic):
            findings.append(
                Finding(
                    "error",
                    "Ignoring directory {directory}: {topic!r} is not a legal topic name",
                    dict(directory=directory, topic=topic),
                )
            )
            continue
        if not dash or not topic:
            findings.append(
                Finding(
                    "warn",
                    "Ignoring directory {directory}: not named <topic>-<partition>",
                    dict(directory=directory),
                )
            )
            continue
        try:
            partition = int(number)
        except ValueError:
            partition = -1
        if partition < 0 or str(partition) != number:
            findings.append(
                Finding(
                    "error",
                    "Ignoring directory {directory}: {number!r} is not a partition "
                    "number (the Java broker would refuse to start)",
                    dict(directory=directory, number=number),
                )
            )
            continue
        found.append((topic, partition, directory))
    return found


def freeDescriptors():
    """
    How many more files this process may open (the soft C{RLIMIT_NOFILE}
    less the descriptors open now), or L{None} where that cannot be told.
    """
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        used = len(os.listdir("/proc/self/fd"))
    except (ImportError, OSError):
        return None
    if limit == resource.RLIM_INFINITY:
        return None
    return limit - used


class MessageStoreManager(Service):
    """
    All partition stores of this broker.

    @param threadpool: the pool for file work; by default the manager runs
        its own, started and stopped with the service.
    """

    log = Logger()
    name = "message-store"

    def __init__(self, config, reactor=None, threadpool=None):
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self._reactor = reactor
        self._ownPool = threadpool is None
        self._threadpool = threadpool or ThreadPool(1, 8, "metaq-store")
        self._stores = {}
        # The stores puts went to, until the topic sections are replaced
        # (a reload): what decides whether a put may create or use one.
        self._acceptedOf = None
        self._accepted = {}
        self._started = None
        self._flushCalls = {}
        self._deleteCalls = {}
        self._policies = {}
        self._loaded = False
        self._segmentCheck = None
        self._fsync = None
        self.verifier = SegmentVerifier(
            self, config.verifyBytesPerSecond, config.verifyPassInterval, reactor
        )

    # Life cycle

    def startService(self):
        Service.startService(self)
        if self._ownPool:
            self._threadpool.start()
            # Should the service never be stopped, its threads must still
            # not keep the process alive.
            self._poolShutdown = self._reactor.addSystemEventTrigger(
                "after", "shutdown", self._threadpool.stop
            )
        self._chooseFsync()
        self._started = ensureDeferred(self._load())
        self._started.addCallback(lambda _: self._startChecks())
        return self._started

    def _chooseFsync(self):
        """
        Pick how group commit runs its fsyncs (C{fsyncMethod}); done when
        the service starts, after C{twistd} has forked, since a kernel AIO
        context belongs to the process that set it up.
        """
        self._fsync, fellBack = chooseFsync(
            self.config.fsyncMethod, self._reactor, self._threadpool)
        if fellBack is not None:
            self.log.info("Group commit fsyncs run in a thread: {reason}", reason=fellBack)
        else:
            self.log.info("Group commit fsyncs run {how} (fsyncMethod={method})",
                          how=describeFsync(self._fsync), method=self.config.fsyncMethod)

    @property
    def fsync(self):
        """
        The L{metamorphosis.broker.store.interfaces.IFsync} of group commit
        (C{fsyncMethod}), chosen when the service starts; L{None} before.
        The transaction journal forces its files with it too.
        """
        return self._fsync

    #: Given to every store as its L{MessageStore.fsyncObserver}.
    fsyncObserver = None

    @property
    def loaded(self):
        """
        Whether the partitions found at start are recovered and served.
        """
        return self._loaded
    def _startChecks(self):
        if not self.running:
            return
        self.verifier.start()
        if self.config.segmentCheckInterval > 0:
            self._segmentCheck = LoopingCall(self.checkActiveSegments)
            self._segmentCheck.clock = self._reactor
            self._segmentCheck.start(self.config.segmentCheckInterval / 1000.0, now=False)

    def checkActiveSegments(self):
        """
        Check that the active segment file of every partition still has its
        name (a deleted or replaced one makes its partition read only).
        """
        return DeferredList(
            [store.checkActiveSegment() for store in self._stores.values()],
            consumeErrors=True,
        )

    def suspectDamage(self, store, offset):
        """
        A consumer had trouble reading C{offset}: verify its segment soon.
        """
        self.verifier.suspect(store, offset)

    def whenStarted(self):
        """
        A Deferred firing once the existing partitions are loaded.
        """
        if self._started is None:
            raise RuntimeError("the store manager is not started")
        d = Deferred()

        def fire(result):
            d.callback(result)
            return result

        self._started.addBoth(fire)
        return d

    def _dataPaths(self):
        paths = [self.config.dataPath]
        for topicConfig in self.config.topics.values():
            if topicConfig.dataPath:
                paths.append(topicConfig.dataPath)
        unique = []
        for path in paths:
            if os.path.abspath(path) not in map(os.path.abspath, unique):
                unique.append(path)
        return unique

    def _findPartitions(self):
        """
        The partition directories of all data paths, each partition once.
        Runs in a thread.
        """
        findings = []
        found = []
        seen = {}
        for dataPath in self._dataPaths():
            try:
                directories = _partitionDirectories(dataPath, findings)
            except OSError as e:
                findings.append(
                    Finding("error", "Cannot read data path {path}: {error}",
                            dict(path=dataPath, error=e))
                )
                continue
            for topic, partition, directory in directories:
                if (topic, partition) in seen:
                    findings.append(
                        Finding(
                            "error",
                            "Ignoring {directory}: partition {topic}-{partition} is "
                            "already loaded from {other}",
                            dict(directory=directory, topic=topic, partition=partition,
                                 other=seen[topic, partition]),
                        )
                    )
                    continue
                seen[topic, partition] = directory
                found.append((topic, partition, directory))
        return findings, found

    @staticmethod
    def _loadOne(topic, partition, directory):
        """
        Recover one partition directory.  Runs in a thread.

        @return: C{(topic, partition, directory, recovered)}, C{recovered}
            being a L{Finding} when the directory cannot be loaded.
        """
        try:
            recovered = loadPartition(directory)
        except Exception as e:
            recovered = Finding(
                "error",
                "Cannot load partition directory {directory}: {error}; "
                "{topic}-{partition} is read only and serves nothing",
                dict(directory=directory, error=e, topic=topic, partition=partition),
            )
        return topic, partition, directory, recovered

    async def _keepDiskAwake(self):
        """
        Let the kernel's fsyncs keep the main data path's disk awake
        between group commit rounds (C{diskKeepAwakeMicros},
        L{metamorphosis.broker.store.fsync.KernelFsync.keepAwake}), with
        reads of L{AWAKE_FILE}.
        """
        kernel = kernelFsyncOf(self._fsync)
        micros = self.config.diskKeepAwakeMicros
        if kernel is None or not micros:
            return
        path = os.path.join(self.config.dataPath, AWAKE_FILE)
        try:
            fd = await deferToThreadPool(self._reactor, self._threadpool, openAwakeFile, path)
        except OSError as e:
            self.log.info("The disk is not kept awake between group commit rounds: {path}: {error}",
                          path=path, error=errorText(e))
            return
        if self._fsync is None:
            # Stopped meanwhile.
            os.close(fd)
            return
        kernel.awakeFrom(fd, micros / 1e6)

    async def _load(self):
        await self._keepDiskAwake()
        findings, found = await deferToThreadPool(
            self._reactor, self._threadpool, self._findPartitions
        )
        self._log(findings)
        if self.config.loadMessageStoresInParallel:
            loaded = await gatherResults(
                [
                    deferToThreadPool(self._reactor, self._threadpool, self._loadOne, *item)
                    for item in found
                ]
            )
        else:
            loaded = await deferToThreadPool(
                self._reactor, self._threadpool,
                lambda: [self._loadOne(*item) for item in found],
            )
        self._registerLoaded(loaded)

    def _log(self, findings):
        for finding in findings:
            getattr(self.log, finding.level)(finding.format, **finding.fields)

    def _registerLoaded(self, loaded):
        """
        Make the stores of the loaded partitions, in directory order
        whichever way they were loaded.
        """
        self._loaded = True
        for topic, partition, directory, recovered in loaded:
            if isinstance(recovered, Finding):
                self._log([recovered])
                # Read only rather than absent: a put must not start a new
                # log at offset 0 over a directory that could not be read.
                self._makeStore(topic, partition, directory,
                                readOnly=recovered.format.format(**recovered.fields))
                continue
            self._log(recovered.findings)
            store = self._makeStore(
                topic, partition, directory, recovered.segments, recovered.messageCount,
                damaged=recovered.damaged, readOnly=recovered.readOnly,
            )
            self.log.info(
                "Loaded {store} from {directory}: offsets {min} to {max}, "
                "{segments} segment(s)",
                store=str(store), directory=directory, min=store.minOffset,
                max=store.maxOffset, segments=len(recovered.segments),
            )

    def stopService(self):
        return ensureDeferred(self._stopService())

    async def _stopService(self):
        Service.stopService(self)
        if self._segmentCheck is not None and self._segmentCheck.running:
            self._segmentCheck.stop()
        await self.verifier.stop()
        for call in self._flushCalls.values():
            if call.running:
                call.stop()
        self._flushCalls.clear()
        for delayed in self._deleteCalls.values():
            if delayed.active():
                delayed.cancel()
        self._deleteCalls.clear()
        if self._started is not None:
            await DeferredList([self._started], consumeErrors=True)
        results = await DeferredList(
            [store.close() for store in self._stores.values()], consumeErrors=True
        )
        for ok, result in results:
            if not ok:
                self.log.failure("Closing a store failed", result)
        if self._fsync is not None:
            self._fsync.close()
            self._fsync = None
        if self._ownPool:
            self._reactor.removeSystemEventTrigger(self._poolShutdown)
            self._threadpool.stop()

    # Stores

    def getStore(self, topic, partition):
        return self._stores.get((topic, partition))

    def getOrCreateStore(self, topic, partition, offsetIfCreate=0):
        """
        The store of a partition, created if need be.

        @param offsetIfCreate: start offset of a newly created partition (an
            async slave starts at its master's offset).
        @raise IllegalTopic: no topic section accepts C{topic}.
        @raise WrongPartition: C{partition} is out of range.
        @raise RuntimeError: the service has not finished loading.
        """
        if not self.config.isLegalTopic(topic):
            raise IllegalTopic(topic)
        if not 0 <= partition < self.config.numPartitionsOf(topic):
            raise WrongPartition(partition)
        store = self._stores.get((topic, partition))
        if store is None:
            if not self._loaded:
                # A store made now could be a second one on a directory
                # still being recovered.
                raise RuntimeError("the message store manager has not loaded its data yet")
            dataPath = self.config.topicConfig(topic).dataPath
            directory = os.path.join(dataPath, "%s-%d" % (topic, partition))
            # Defence in depth behind the name check: the directory is a
            # direct child of the data path, never elsewhere or an alias.
            if os.path.dirname(os.path.realpath(directory)) != os.path.realpath(dataPath):
                raise IllegalTopic(topic)
            self._checkRoomFor(topic)
            store = self._makeStore(topic, partition, directory, offsetIfCreate=offsetIfCreate)
        return store

    def storeFor(self, topic, partition):
        """
        L{getOrCreateStore}, remembered: the manager never drops a store,
        and whether a topic and partition are accepted only changes when
        the topic sections are replaced.  What every put, transactional
        put, commit and C{sync} asks for (the checks of the topic's name
        and sections cost more than the rest of a lone put's lookups).
        """
        topics = self.config.topics
        if self._acceptedOf is not topics:
            self._acceptedOf = topics
            self._accepted = {}
        store = self._accepted.get((topic, partition))
        if store is None:
            store = self.getOrCreateStore(topic, partition)
            self._accepted[topic, partition] = store
        return store

    def _checkRoomFor(self, topic):
        """
        Refuse a new store when it would pass C{maxAutoCreatedTopics} (for
        a topic that no section names exactly) or leave fewer than
        C{reservedFileDescriptors} descriptors free: each store holds open
        files, and new connections need descriptors too.

        @raise TooManyTopics: too many auto-created topics.
        @raise OutOfDescriptors: too few free descriptors.
        """
        config = self.config
        if topic not in config.topics and not any(t == topic for t, _ in self._stores):
            created = {t for t, _ in self._stores if t not in config.topics}
            if len(created) >= config.maxAutoCreatedTopics:
                raise TooManyTopics(topic, config.maxAutoCreatedTopics)
        free = freeDescriptors()
        if free is not None and free < config.reservedFileDescriptors:
            raise OutOfDescriptors(topic, free, config.reservedFileDescriptors)

    def chooseRandomPartition(self, topic):
        return random.randrange(self.config.numPartitionsOf(topic))

    def stores(self):
        return [(topic, partition, store) for (topic, partition), store in self._stores.items()]

    def topics(self):
        return list(dict.fromkeys(topic for topic, _ in self._stores))

    def _makeStore(self, topic, partition, directory, segments=None, messageCount=0,
                   offsetIfCreate=0, damaged=(), readOnly=None):
        topicConfig = self.config.topicConfig(topic)
        store = MessageStore(
            topic,
            partition,
            directory,
            topicConfig,
            segments=segments,
            messageCount=messageCount,
            deletePolicy=self._deletePolicy(topicConfig),
            reactor=self._reactor,
            threadpool=self._threadpool,
            offsetIfCreate=offsetIfCreate,
            damaged=damaged,
            readOnly=readOnly,
            fsync=self._fsync,
            preallocate=self.config.preallocateSize,
        )
        store.fsyncObserver = self.fsyncObserver
        self._stores[topic, partition] = store
        if not store.groupCommit and store.unflushInterval > 0:
            self._scheduleFlush(store.unflushInterval)
        if store.deletePolicy is not None:
            self._scheduleDeletes(topicConfig.deleteWhen)
        return store

    # Flushing

    def _scheduleFlush(self, interval):
        if interval in self._flushCalls or not self.running:
            return
        call = LoopingCall(self.flushStores, interval)
        call.clock = self._reactor
        self._flushCalls[interval] = call
        call.start(interval / 1000.0, now=False).addErrback(
            lambda failure: self.log.failure("Periodic flush failed", failure)
        )

    def flushStores(self, interval):
        """
        Flush every store whose topic has this C{unflushInterval} (Java
        C{FlushRunner}).
        """
        return DeferredList(
            [
                store.flush()
                for store in self._stores.values()
                if not store.groupCommit and store.unflushInterval == interval
            ],
            consumeErrors=True,
        )

    # Retention

    def _deletePolicy(self, topicConfig):
        """
        The parsed policy of a topic, or L{None} (logged) when its
        C{deletePolicy} or C{deleteWhen} is invalid: a bad retention setting
        disables retention for the topic rather than stopping the broker.
        """
        key = (topicConfig.deletePolicy, topicConfig.deleteWhen)
        if key not in self._policies:
            try:
                CronExpression(topicConfig.deleteWhen)
                self._policies[key] = parseDeletePolicy(topicConfig.deletePolicy)
            except (InvalidDeletePolicy, InvalidCronExpression) as e:
                self.log.error(
                    "Retention disabled for topic {topic}: {error}",
                    topic=topicConfig.topic, error=errorText(e),
                )
                self._policies[key] = None
        return self._policies[key]

    def _scheduleDeletes(self, deleteWhen):
        if deleteWhen in self._deleteCalls or not self.running:
            return
        now = self._reactor.seconds()
        fireAt = CronExpression(deleteWhen).nextFireTime(datetime.datetime.fromtimestamp(now))
        if fireAt is None:
            return
        delay = max(0.0, fireAt.timestamp() - now)
        self._deleteCalls[deleteWhen] = self._reactor.callLater(
            delay, self._deleteJob, deleteWhen
        )

    def _deleteJob(self, deleteWhen):
        return ensureDeferred(self._runDeleteJob(deleteWhen))

    async def _runDeleteJob(self, deleteWhen):
        del self._deleteCalls[deleteWhen]
        try:
            await self.runDeletePolicies(deleteWhen)
        finally:
            self._scheduleDeletes(deleteWhen)

    def runDeletePolicies(self, deleteWhen=None, now=None):
        """
        Apply retention to the stores whose topic uses the schedule
        C{deleteWhen} (all stores when L{None}), one store at a time (Java
        C{DeleteJob}).

        @return: a Deferred firing with C{{(topic, partition): [removed
            segment starts]}}.
        """
        return ensureDeferred(self._runDeletePolicies(deleteWhen, now))

    async def _runDeletePolicies(self, deleteWhen=None, now=None):
        removed = {}
        for (topic, partition), store in list(self._stores.items()):
            if deleteWhen is not None and (
                self.config.topicConfig(topic).deleteWhen != deleteWhen
            ):
                continue
            try:
                starts = await store.runDeletePolicy(now)
            except Exception:
                self.log.failure("Retention failed for {store}", store=str(store))
                continue
            if starts:
                removed[topic, partition] = starts
        return removed
