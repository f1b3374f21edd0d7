"""
The broker's configuration: MetaQ's C{server.ini} as typed objects.

The sections follow the Java C{MetaConfig}, C{TopicConfig} and C{ZKConfig}
classes (spec/storage.md section 9); the attribute names are the Java key names
so that a reader of a C{server.ini} finds each key here under its own name.
Per-topic values that a C{[topic=NAME]} section leaves unset inherit the
C{[system]} value; L{MetaConfig.topicConfig} resolves that inheritance.
"""

import re
from dataclasses import dataclass, field, replace
from typing import Optional


@dataclass
class ZookeeperConfig:
    """
    The C{[zookeeper]} section.
    """

    zkEnable: bool = True
    zkConnect: Optional[str] = None
    zkSessionTimeoutMs: int = 30000
    zkConnectionTimeoutMs: int = 30000
    zkSyncTimeMs: int = 5000
    zkRoot: str = "/meta"


@dataclass
class TopicConfig:
    """
    One C{[topic=NAME]} section, with every unset key already inherited from
    C{[system]}.

    @ivar filters: server-side consumer filters, consumer group name to the
        dotted name of an object providing
        L{metamorphosis.broker.interfaces.IMessageFilter}.
    """

    topic: str
    numPartitions: int = 1
    unflushThreshold: int = 1000
    unflushInterval: int = 10000
    maxSegmentSize: int = 1073741824
    dataPath: str = "meta"
    deletePolicy: str = "delete,168"
    deleteWhen: str = "0 0 6,18 * * ?"
    acceptPublish: bool = True
    acceptSubscribe: bool = True
    stat: bool = False
    filters: dict = field(default_factory=dict)

    @property
    def groupCommit(self):
        """
        Whether the store of this topic flushes by group commit
        (C{unflushThreshold <= 0}, spec/storage.md section 5).
        """
        return self.unflushThreshold <= 0


@dataclass
class MetaConfig:
    """
    The whole C{server.ini}: the C{[system]} keys as attributes, the
    C{[zookeeper]} section and the topic sections.

    @ivar topics: topic name (as written in the section, wildcards included)
        to L{TopicConfig}, in file order.
    @ivar path: the file this was read from, or L{None} for the built-in
        standalone defaults.
    @ivar checksum: CRC32 of the file's bytes (the C{config_checksum} stat and
        the C{master_config_checksum} znode), 0 without a file.
    """

    brokerId: int = 0
    serverPort: int = 8123
    dashboardHttpPort: int = 8120
    hostName: Optional[str] = None
    dataPath: str = "meta"
    dataLogPath: Optional[str] = None
    appClassPath: Optional[str] = None
    numPartitions: int = 1
    unflushThreshold: int = 1000
    unflushInterval: int = 10000
    maxSegmentSize: int = 1073741824
    maxTransferSize: int = 1048576
    getProcessThreadCount: int = 20
    putProcessThreadCount: int = 20
    deletePolicy: str = "delete,168"
    deleteWhen: str = "0 0 6,18 * * ?"
    quartzThreadCount: int = 5
    maxCheckpoints: int = 3
    checkpointInterval: int = 3600000
    maxTxTimeoutTimerCapacity: int = 30000
    flushTxLogAtCommit: int = 1
    maxTxTimeoutInSeconds: int = 60
    acceptPublish: bool = True
    acceptSubscribe: bool = True
    stat: bool = False
    updateConsumerOffsets: bool = False
    loadMessageStoresInParallel: bool = False
    zookeeper: ZookeeperConfig = field(default_factory=ZookeeperConfig)
    topics: dict = field(default_factory=dict)
    acceptAnyTopic: bool = False
    path: Optional[str] = None
    checksum: int = 0

    @property
    def transactionDataPath(self):
        """
        The root of C{transactions/}: C{dataLogPath}, which defaults to
        C{dataPath}.
        """
        return self.dataLogPath or self.dataPath

    def _defaultTopicConfig(self, topic):
        return TopicConfig(
            topic=topic,
            numPartitions=self.numPartitions,
            unflushThreshold=self.unflushThreshold,
            unflushInterval=self.unflushInterval,
            maxSegmentSize=self.maxSegmentSize,
            dataPath=self.dataPath,
            deletePolicy=self.deletePolicy,
            deleteWhen=self.deleteWhen,
            acceptPublish=self.acceptPublish,
            acceptSubscribe=self.acceptSubscribe,
            stat=self.stat,
        )

    def _matchingSection(self, topic):
        if topic in self.topics:
            return self.topics[topic]
        for name, section in self.topics.items():
            if "*" in name and re.fullmatch(
                ".*".join(re.escape(part) for part in name.split("*")), topic
            ):
                return section
        return None

    def isLegalTopic(self, topic):
        """
        Whether puts to C{topic} are accepted: it matches a configured topic
        section, where C{*} in a section name matches anything (Java
        C{MessageStoreManager.isLegalTopic}), or the broker runs with its
        standalone default of accepting any topic.
        """
        return self.acceptAnyTopic or self._matchingSection(topic) is not None

    def topicConfig(self, topic):
        """
        The effective configuration of C{topic}: its own section (or the
        wildcard section it matches) with inheritance from C{[system]}
        resolved, else the C{[system]} defaults.
        """
        section = self._matchingSection(topic)
        if section is None:
            return self._defaultTopicConfig(topic)
        if section.topic != topic:
            return replace(section, topic=topic)
        return section

    def numPartitionsOf(self, topic):
        """
        The partition count of C{topic} on this broker.
        """
        return self.topicConfig(topic).numPartitions
