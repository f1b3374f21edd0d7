"""
The broker's configuration: MetaQ's C{server.ini} as typed objects.

The sections follow the Java C{MetaConfig}, C{TopicConfig} and C{ZKConfig}
classes (docs/storage.md); the attribute names are the Java key names
so that a reader of a C{server.ini} finds each key here under its own name.
Per-topic values that a C{[topic=NAME]} section leaves unset inherit the
C{[system]} value; L{MetaConfig.topicConfig} resolves that inheritance.

L{loadConfig} reads a file the way the Java broker does (ini4j sections,
Aviator-evaluated numbers and booleans, key validation with a Levenshtein
hint); L{standaloneConfig} is the configuration of a broker started without
a file.
"""

import re
import zlib
from dataclasses import dataclass, field, replace
from functools import lru_cache

from metamorphosis.broker.access import AccessConfigError, AccessRules, parseAccess
from metamorphosis.protocol.commands import DEFAULT_MAX_BODY_SIZE, DEFAULT_MAX_LINE_LENGTH
from metamorphosis.protocol.topics import (
    DEFAULT_MAX_TOPIC_LENGTH,
    IllegalTopicName,
    checkTopicPattern,
    isLegalTopic,
    topicPattern,
)


@lru_cache(maxsize=1024)
def wildcardPattern(name):
    """
    The compiled pattern of a topic section name in which C{*} matches any
    run of characters legal in a topic name (never C{/}).
    """
    return topicPattern(name)


@dataclass
class ZookeeperConfig:
    """
    The C{[zookeeper]} section.
    """

    zkEnable: bool = True
    zkConnect: str | None = None
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
        (C{unflushThreshold <= 0}, docs/storage.md).
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
    #: The HTTP endpoint's port (metrics, health, dashboard); off when unset.
    dashboardHttpPort: int | None = None
    hostName: str | None = None
    dataPath: str = "meta"
    dataLogPath: str | None = None
    appClassPath: str | None = None
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
    # Limits against hostile or broken clients (not in the Java broker;
    # docs/limits.md).
    maxTopicNameLength: int = DEFAULT_MAX_TOPIC_LENGTH
    maxUnfinishedRequestBytes: int = 256 * 1024 * 1024
    maxRequestSeconds: int = 60
    #: The largest body a request may declare, and the longest header line:
    #: a request past either is malformed (400, then the connection
    #: closes) as soon as its header says so, before its body is read.
    maxRequestBodySize: int = DEFAULT_MAX_BODY_SIZE
    maxRequestLineLength: int = DEFAULT_MAX_LINE_LENGTH
    maxTransactionBytes: int = 256 * 1024 * 1024
    maxAutoCreatedTopics: int = 1000
    reservedFileDescriptors: int = 64
    maxConnections: int = 10000
    maxConnectionsPerHost: int = 1000
    shutdownDrainSeconds: int = 30
    #: docs/disk-faults.md: how often (ms) the active segment of every
    #: partition is checked for deletion; 0 only checks at each write.
    segmentCheckInterval: int = 5000
    #: docs/storage.md: how group commit runs its fsyncs: "kernel" (Linux
    #: AIO, no thread hand-off), "thread" (a pool thread), or "auto" (the
    #: kernel where it can).
    fsyncMethod: str = "auto"
    #: docs/storage.md: bytes of zeros written ahead of the records of each
    #: partition's active segment, so that an fsync changes no file size;
    #: 0 turns it off.
    preallocateSize: int = 4 * 1024 * 1024
    #: docs/transactions.md: under group commit with flushTxLogAtCommit=1,
    #: the most ms a committed transaction's messages wait for an fsync of
    #: their partition (and so for consumers) when no put brings one.
    txFlushInterval: int = 20
    #: docs/performance.md: µs the reactor goes on polling its sockets
    #: after a reply that leaves its connection waiting for nothing,
    #: before it sleeps; 0 turns it off.  Unset (None), it is 0, but a
    #: gregor slave sets it to
    #: metamorphosis.broker.idlepoll.SYNC_SLAVE_MICROS (docs/ha.md).
    idlePollMicros: int | None = None
    #: docs/storage.md: µs without a request past which the disk is sent a
    #: read while group commit rounds follow each other, so that the next
    #: fsync does not wait for a virtual disk to wake; 0 turns it off.
    diskKeepAwakeMicros: int = 100
    #: Read rate of the background verification of sealed segments; 0
    #: turns it off.
    verifyBytesPerSecond: int = 8388608
    #: Seconds after which a verified segment is verified again.
    verifyPassInterval: int = 86400
    zookeeper: ZookeeperConfig = field(default_factory=ZookeeperConfig)
    topics: dict = field(default_factory=dict)
    acceptAnyTopic: bool = False
    path: str | None = None
    checksum: int = 0
    #: The slave number of an async replication slave (set from its
    #: C{async_slave.properties}, docs/ha.md); -1 otherwise.
    slaveId: int = -1
    closedPartitions: set = field(default_factory=set)
    #: The C{[listeners]} section: C{(name, endpoint string)} pairs in file
    #: order; empty for the one plain listener on C{serverPort}.
    listeners: list = field(default_factory=list)
    #: The C{[access]} section (L{metamorphosis.broker.access.AccessRules});
    #: without it everything is allowed.
    access: AccessRules = field(default_factory=AccessRules)

    def isClosedPartition(self, topic, partition):
        """
        Whether C{(topic, partition)} was closed by an operator: puts, syncs
        and gets to it are refused with 403 (Java
        C{MetaConfig.isClosedPartition}).
        """
        return (topic, partition) in self.closedPartitions

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
        section = self.topics.get(topic)
        if section is not None:
            return section
        for name, section in self.topics.items():
            if "*" in name and wildcardPattern(name).fullmatch(topic):
                return section
        return None

    def isLegalTopic(self, topic):
        """
        Whether puts to C{topic} are accepted: it matches a configured topic
        section, where C{*} in a section name matches anything (Java
        C{MessageStoreManager.isLegalTopic}), or the broker runs with its
        standalone default of accepting any topic.
        """
        if not isLegalTopic(topic, self.maxTopicNameLength):
            return False
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
        section = self._matchingSection(topic)
        return (self if section is None else section).numPartitions


class ConfigError(Exception):
    """
    A configuration file that cannot be used; the message names the file,
    the section, the key and the reason.
    """


#: Keys of C{[system]} this broker adds to Java's: its limits against
#: hostile or broken clients (docs/limits.md).
LIMIT_KEYS = frozenset(
    """maxTopicNameLength maxUnfinishedRequestBytes maxRequestSeconds
    maxRequestBodySize maxRequestLineLength
    maxTransactionBytes maxAutoCreatedTopics reservedFileDescriptors
    maxConnections maxConnectionsPerHost shutdownDrainSeconds""".split()
)

#: Keys of C{[system]}: the lower-case field names of the Java MetaConfig,
#: which C{Config.getFieldSet} accepts; those after C{loadMessageStoresInParallel}
#: are internal fields, accepted and ignored as Java does.
SYSTEM_KEYS = frozenset(
    """brokerId serverPort dashboardHttpPort hostName dataPath dataLogPath
    appClassPath numPartitions unflushThreshold unflushInterval maxSegmentSize
    maxTransferSize getProcessThreadCount putProcessThreadCount deletePolicy
    deleteWhen quartzThreadCount maxCheckpoints checkpointInterval
    maxTxTimeoutTimerCapacity flushTxLogAtCommit maxTxTimeoutInSeconds
    acceptPublish acceptSubscribe stat updateConsumerOffsets
    loadMessageStoresInParallel segmentCheckInterval verifyBytesPerSecond
    verifyPassInterval fsyncMethod preallocateSize txFlushInterval idlePollMicros diskKeepAwakeMicros serialVersionUID topics slaveConfig zkConfig
    topicConfigMap propertyChangeSupport lastModified path configFileChecksum
    log closedPartitionMap""".split()
) | LIMIT_KEYS

#: Keys of C{[zookeeper]}: the ZKConfig C{@Key} names; Java also accepts
#: every C{[system]} name there (without effect).
ZOOKEEPER_KEYS = frozenset(
    """zk.zkEnable zk.zkConnect zk.zkSessionTimeoutMs zk.zkConnectionTimeoutMs
    zk.zkSyncTimeMs zk.zkRoot""".split()
)

#: Keys of a C{[topic=NAME]} section besides C{group.<name>} filters; C{topic}
#: and C{filterClassNames} are accepted without effect.
TOPIC_KEYS = frozenset(
    """numPartitions unflushThreshold unflushInterval dataPath deletePolicy
    deleteWhen acceptPublish acceptSubscribe stat topic filterClassNames""".split()
)

_SYSTEM_INTS = frozenset(
    """brokerId serverPort dashboardHttpPort numPartitions unflushThreshold
    unflushInterval maxSegmentSize maxTransferSize getProcessThreadCount
    putProcessThreadCount quartzThreadCount maxCheckpoints
    maxTxTimeoutTimerCapacity flushTxLogAtCommit maxTxTimeoutInSeconds
    maxTopicNameLength maxRequestSeconds maxRequestBodySize maxRequestLineLength
    maxAutoCreatedTopics reservedFileDescriptors
    maxConnections maxConnectionsPerHost shutdownDrainSeconds
    segmentCheckInterval verifyBytesPerSecond verifyPassInterval preallocateSize
    txFlushInterval idlePollMicros diskKeepAwakeMicros""".split()
)
_SYSTEM_LONGS = frozenset(
    ["checkpointInterval", "maxUnfinishedRequestBytes", "maxTransactionBytes"])
_SYSTEM_BOOLS = frozenset(
    """acceptPublish acceptSubscribe stat updateConsumerOffsets
    loadMessageStoresInParallel""".split()
)
_SYSTEM_STRINGS = frozenset(
    "hostName dataPath dataLogPath appClassPath deletePolicy deleteWhen fsyncMethod".split()
)
_TOPIC_INTS = frozenset("numPartitions unflushThreshold unflushInterval".split())
_TOPIC_BOOLS = frozenset("acceptPublish acceptSubscribe stat".split())
_TOPIC_STRINGS = frozenset("dataPath deletePolicy deleteWhen".split())

_INT_RANGE = (-(2**31), 2**31 - 1)
_LONG_RANGE = (-(2**63), 2**63 - 1)


def levenshtein(a, b):
    """
    The edit distance between two strings (commons-lang
    C{StringUtils.getLevenshteinDistance}).
    """
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb))
            )
        previous = current
    return previous[-1]


def closestKey(key, known):
    """
    The known key nearest to C{key}; ties go to the alphabetically first, so
    the hint does not depend on set ordering.
    """
    return min(sorted(known), key=lambda k: levenshtein(key, k))


class _Arithmetic:
    """
    A recursive-descent evaluator for the integer expressions Aviator
    accepts in C{server.ini} (C{1024*1024}, C{(1+2)*3}, C{-5}): Java long
    arithmetic with C{+ - * / %} and parentheses; nothing else is allowed,
    so a value can never run code.
    """

    _token = re.compile(r"\s*(?:(\d+)|(.))")

    def __init__(self, text):
        self.tokens = []
        for match in self._token.finditer(text.strip()):
            number, op = match.groups()
            if number is not None:
                self.tokens.append(int(number))
            elif op.strip():
                if op not in "+-*/%()":
                    raise ValueError(f"unexpected character {op!r}")
                self.tokens.append(op)
        self.position = 0

    def evaluate(self):
        if not self.tokens:
            raise ValueError("empty expression")
        value = self._sum()
        if self.position != len(self.tokens):
            raise ValueError(f"unexpected {self.tokens[self.position]!r}")
        return value

    def _peek(self):
        if self.position < len(self.tokens):
            return self.tokens[self.position]
        return None

    def _next(self):
        token = self._peek()
        if token is None:
            raise ValueError("unexpected end of expression")
        self.position += 1
        return token

    def _sum(self):
        value = self._product()
        while self._peek() in ("+", "-"):
            if self._next() == "+":
                value += self._product()
            else:
                value -= self._product()
        return value

    def _product(self):
        value = self._unary()
        while self._peek() in ("*", "/", "%"):
            op = self._next()
            right = self._unary()
            if op == "*":
                value *= right
            elif right == 0:
                raise ValueError("division by zero")
            else:
                quotient = abs(value) // abs(right)
                if (value < 0) != (right < 0):
                    quotient = -quotient
                value = quotient if op == "/" else value - quotient * right
        return value

    def _unary(self):
        if self._peek() == "-":
            self._next()
            return -self._unary()
        if self._peek() == "+":
            self._next()
            return self._unary()
        return self._atom()

    def _atom(self):
        token = self._next()
        if token == "(":
            value = self._sum()
            if self._next() != ")":
                raise ValueError("missing ')'")
            return value
        if isinstance(token, int):
            return token
        raise ValueError(f"unexpected {token!r}")


def evaluateInteger(text, bits=32):
    """
    The value of an Aviator integer expression, checked to fit a Java
    C{int} (C{bits=32}) or C{long} (C{bits=64}).

    @raise ValueError: with the reason.
    """
    value = _Arithmetic(text).evaluate()
    low, high = _INT_RANGE if bits == 32 else _LONG_RANGE
    if not low <= value <= high:
        raise ValueError(f"{value} does not fit in a {bits}-bit integer")
    return value


def evaluateBoolean(text):
    """
    The value of an Aviator boolean: C{true} or C{false}.

    @raise ValueError: for anything else.
    """
    value = text.strip()
    if value == "true":
        return True
    if value == "false":
        return False
    raise ValueError("expected true or false")


def _parseIni(text, path):
    """
    Sections of an ini4j-style file, in order: a list of C{(name, lineNumber,
    [(key, value, lineNumber)])}. Lines starting with C{;} or C{#} are
    comments; the first C{=} or C{:} separates key and value.
    """
    sections = []
    current = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in ";#":
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise ConfigError(f"{path}, line {number}: unterminated section header {line!r}")
            current = (line[1:-1].strip(), number, [])
            sections.append(current)
            continue
        match = re.match(r"([^=:]*?)\s*[=:]\s*(.*)$", line)
        if match is None or not match.group(1):
            raise ConfigError(f"{path}, line {number}: expected key=value, got {line!r}")
        if current is None:
            raise ConfigError(
                f"{path}, line {number}: key {match.group(1)!r} outside any section"
            )
        current[2].append((match.group(1), match.group(2), number))
    return sections


class _Section:
    """
    One parsed section: looks values up and converts them, turning every
    failure into a L{ConfigError} that names the file, section and key.
    """

    def __init__(self, path, name, entries, known):
        self.path = path
        self.name = name
        self.values = {}
        self.lines = {}
        for key, value, line in entries:
            if known is not None and key not in known and not (
                name.startswith("topic=") and key.startswith("group.")
            ):
                self.fail(
                    key,
                    line,
                    f"Invalid config key:{key},do you mean '{closestKey(key, known)}'?",
                )
            self.values[key] = value
            self.lines[key] = line

    def fail(self, key, line, reason):
        raise ConfigError(f"{self.path}: [{self.name}] {key} (line {line}): {reason}")

    def get(self, key):
        """
        The raw value, or L{None} when absent or blank (blank means unset).
        """
        value = self.values.get(key)
        if value is None or not value.strip():
            return None
        return value.strip()

    def convert(self, key, kind):
        value = self.get(key)
        if value is None:
            return None
        try:
            if kind == "int":
                return evaluateInteger(value, 32)
            if kind == "long":
                return evaluateInteger(value, 64)
            if kind == "bool":
                return evaluateBoolean(value)
            return value
        except ValueError as e:
            self.fail(key, self.lines[key], f"bad value {value!r}: {e}")

    def apply(self, target, keys, kind, rename=lambda key: key):
        for key in sorted(keys):
            value = self.convert(key, kind)
            if value is not None:
                setattr(target, rename(key), value)


def parseConfig(data, path="<string>"):
    """
    Build a L{MetaConfig} from the bytes of a C{server.ini}.

    @raise ConfigError: for anything the Java broker would refuse, and for
        topic sections without a name, duplicate sections and numbers out of
        range.
    """
    config = MetaConfig(path=path, checksum=zlib.crc32(data))
    sections = _readSections(data, path)
    byName = {name: entries for name, _, entries in sections}

    system = _Section(path, "system", byName.get("system", []), SYSTEM_KEYS)
    for kind, keys in (
        ("int", _SYSTEM_INTS),
        ("long", _SYSTEM_LONGS),
        ("bool", _SYSTEM_BOOLS),
        ("str", _SYSTEM_STRINGS),
    ):
        system.apply(config, keys, kind)

    zk = _Section(
        path, "zookeeper", byName.get("zookeeper", []), ZOOKEEPER_KEYS | SYSTEM_KEYS
    )
    unprefix = lambda key: key[len("zk."):]
    zk.apply(config.zookeeper, {"zk.zkSessionTimeoutMs", "zk.zkConnectionTimeoutMs",
                                "zk.zkSyncTimeMs"}, "int", unprefix)
    zk.apply(config.zookeeper, {"zk.zkEnable"}, "bool", unprefix)
    zk.apply(config.zookeeper, {"zk.zkConnect", "zk.zkRoot"}, "str", unprefix)
    root = "/" + config.zookeeper.zkRoot.strip("/")
    config.zookeeper.zkRoot = root

    config.topics = _topicSections(config, path, sections)
    config.listeners = _listenersSection(path, sections)
    config.access = _accessSection(path, sections, config.access)
    _verify(config, path)
    return config


def _listenersSection(path, sections):
    """
    The C{[listeners]} section: each key names a listener, its value is a
    Twisted server endpoint string (checked when the broker starts).
    """
    for name, line, entries in sections:
        if name == "listeners":
            listeners = []
            for key, value, number in entries:
                if not value.strip():
                    raise ConfigError(f"{path}: [listeners] {key} (line {number}): "
                                      "empty endpoint")
                listeners.append((key, value.strip()))
            return listeners
    return []


def _accessSection(path, sections, default):
    """
    The C{[access]} section's rules, or C{default} without one.
    """
    for name, line, entries in sections:
        if name == "access":
            try:
                return parseAccess([(key, value) for key, value, _ in entries])
            except AccessConfigError as e:
                raise ConfigError(f"{path}: [access] (line {line}): {e}")
    return default


def _readSections(data, path):
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        # The Java sample files are GBK; gb18030 decodes any byte sequence
        # that GBK does.
        text = data.decode("gb18030", errors="replace")
    sections = _parseIni(text, path)
    seen = set()
    for name, line, entries in sections:
        if name in seen:
            raise ConfigError(f"{path}, line {line}: duplicate section [{name}]")
        seen.add(name)
        if name not in ("system", "zookeeper", "listeners", "access") and not name.startswith(
            "topic="
        ):
            raise ConfigError(
                f"{path}, line {line}: [{name}]: unknown section, expected "
                "[system], [zookeeper], [listeners], [access] or [topic=NAME]"
            )
    return sections


def _topicSections(config, path, sections):
    """
    The topic sections, in file order, inheriting from C{config}'s
    C{[system]} values.
    """
    topics = {}
    for name, line, entries in sections:
        if not name.startswith("topic="):
            continue
        topicName = name[len("topic="):].strip()
        if not topicName:
            raise ConfigError(f"{path}, line {line}: [{name}]: topic section without a name")
        try:
            checkTopicPattern(topicName, config.maxTopicNameLength)
        except IllegalTopicName as e:
            raise ConfigError(f"{path}, line {line}: [{name}]: {e}")
        topics[topicName] = _topicConfig(config, path, name, topicName, entries)
        if topics[topicName].numPartitions <= 0:
            raise ConfigError(f"{path}: [{name}] numPartitions: must be positive")
    return topics


def _topicConfig(config, path, name, topicName, entries):
    section = _Section(path, name, entries, TOPIC_KEYS)
    topic = config._defaultTopicConfig(topicName)
    section.apply(topic, _TOPIC_INTS, "int")
    section.apply(topic, _TOPIC_BOOLS, "bool")
    section.apply(topic, _TOPIC_STRINGS, "str")
    for key in section.values:
        if key.startswith("group.") and section.get(key) is not None:
            group = key[len("group."):]
            if not group:
                section.fail(key, section.lines[key], "filter key without a group name")
            topic.filters[group] = section.get(key)
    return topic


def _verify(config, path):
    problems = []
    if config.numPartitions <= 0:
        problems.append(("system", "numPartitions", "must be positive"))
    if config.maxTransferSize <= 0:
        problems.append(("system", "maxTransferSize", "must be positive"))
    if config.maxSegmentSize <= 0:
        problems.append(("system", "maxSegmentSize", "must be positive"))
    if not 0 <= config.brokerId <= 1023:
        problems.append(("system", "brokerId", "must be between 0 and 1023"))
    if not 0 <= config.serverPort <= 65535:
        problems.append(("system", "serverPort", "must be a TCP port"))
    if not 1 <= config.maxTopicNameLength <= DEFAULT_MAX_TOPIC_LENGTH:
        # Longer names no longer fit a directory name with the partition.
        problems.append(("system", "maxTopicNameLength",
                         f"must be between 1 and {DEFAULT_MAX_TOPIC_LENGTH}"))
    if config.dashboardHttpPort is not None and not 0 <= config.dashboardHttpPort <= 65535:
        problems.append(("system", "dashboardHttpPort", "must be a TCP port"))
    for key in ("segmentCheckInterval", "verifyBytesPerSecond", "maxConnections",
                "maxConnectionsPerHost", "preallocateSize", "idlePollMicros", "diskKeepAwakeMicros"):
        # idlePollMicros may be unset (None): its default depends on the mode.
        value = getattr(config, key)
        if value is not None and value < 0:
            problems.append(("system", key, "must not be negative (0 turns it off)"))
    for key in ("maxRequestBodySize", "maxRequestLineLength"):
        if getattr(config, key) <= 0:
            problems.append(("system", key, "must be positive"))
    if config.txFlushInterval < 0:
        problems.append(("system", "txFlushInterval", "must not be negative"))
    if config.fsyncMethod not in ("auto", "kernel", "thread"):
        problems.append(("system", "fsyncMethod", "must be auto, kernel or thread"))
    if config.verifyPassInterval <= 0:
        problems.append(("system", "verifyPassInterval", "must be positive"))
    if problems:
        section, key, reason = problems[0]
        raise ConfigError(f"{path}: [{section}] {key}: {reason}")


def loadConfig(path):
    """
    Read and validate the C{server.ini} at C{path}.

    @raise ConfigError: the file cannot be read or is invalid.
    """
    return parseConfig(_readFile(path), path)


def _readFile(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the configuration file: {e.strerror}")


def standaloneConfig(dataPath="data"):
    """
    The configuration of a broker started without a file: port 8123, data
    under C{dataPath}, no ZooKeeper, any topic accepted with the default
    partition count.

    The flush and visibility settings are those of the C{server.ini} that
    MetaQ ships rather than the Java field defaults: group commit
    (C{unflushThreshold=0}, so an acknowledged put is on disk and at once
    visible to consumers), realtime statistics on, and C{get} beyond the end
    answered with the max offset.
    """
    return MetaConfig(
        dataPath=dataPath,
        unflushThreshold=0,
        stat=True,
        updateConsumerOffsets=True,
        acceptAnyTopic=True,
        zookeeper=ZookeeperConfig(zkEnable=False),
    )


def reloadTopics(config):
    """
    Re-read the topic sections and the C{[access]} rules of C{config}'s file
    into C{config} (the C{[system]}, C{[zookeeper]} and C{[listeners]}
    sections need a restart, as in Java).

    @return: the names of the topics that are new or changed.
    @raise ConfigError: the file is unreadable or invalid; C{config} is
        left unchanged.
    """
    path = config.path
    data = _readFile(path)
    sections = _readSections(data, path)
    topics = _topicSections(config, path, sections)
    rules = _accessSection(path, sections, AccessRules())
    changed = [name for name, topic in topics.items() if config.topics.get(name) != topic]
    config.topics = topics
    config.access = rules
    config.checksum = zlib.crc32(data)
    return changed
