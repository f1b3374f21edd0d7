"""
The broker's statistics and the text of the C{stats} command (stats.md).

L{StatsManager} keeps the counters of the summary (Java C{StatsManager}) and
the realtime counters (Java C{MetaStatLog}), and renders every C{stats} item
with the Java texts, line order and number formatting.
"""

import os
import threading
import time
from collections import Counter
from decimal import ROUND_HALF_EVEN, Decimal

from metamorphosis import METAQ_VERSION
from metamorphosis.broker.config import wildcardPattern

PUT = "put"
GET = "get"
OFFSET = "offset"
GET_MISS = "get_miss"
GET_FAILED = "get_failed"
PUT_FAILED = "put_failed"
MESSAGE_SIZE = "message_size"
PUT_SLAVE = "put_slave"

#: How often the realtime counters are zeroed (Java
#: C{MetaStatLog.RealTimeStatRestTask}).
REALTIME_RESET_INTERVAL = 30 * 60

#: Gets are counted per topic and group up to this many pairs (any client
#: may name any group); gets of further groups are counted under
#: L{OTHER_GROUPS}.
MAX_COUNTED_GROUPS = 1000
OTHER_GROUPS = "*other*"

_HELP = (
    ("*EMPTY*", "Returns broker info."),
    ("help", "Returns help menu."),
    ("topics", "Returns topics statistics detail info."),
    ("offsets", "Returns partitions detail info."),
    ("realtime", "Returns realtime statistics detail info."),
    ("config", "Returns broker's config file content."),
)

_REALTIME_LINES = (
    ("put", PUT),
    ("get", GET),
    ("offset", OFFSET),
    ("get_miss", GET_MISS),
    ("put_failed", PUT_FAILED),
    ("message_size", MESSAGE_SIZE),
)


def formatDecimal(value):
    """
    Java C{new DecimalFormat("#.##").format(value)}: at most two decimals,
    half-even rounding of the double's exact value, no trailing zeros.
    """
    rounded = Decimal(value).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)
    if rounded == 0:
        return "0"
    text = format(rounded, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def javaString(value):
    """
    Java C{String.valueOf} for the values that appear in stats lines.
    """
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


def statsLine(*values):
    """
    One stats line: the values joined by single spaces, then CRLF.
    """
    return " ".join(javaString(value) for value in values) + "\r\n"


def threadCount():
    """
    The number of threads of this process (the Java C{threads} stat counts
    the JVM's threads).
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return threading.active_count()


class RealTimeStats:
    """
    Java C{MetaStatLog}: event counts and value sums keyed by three keys,
    reported aggregated over the second and third keys.
    """

    def __init__(self, clock=time.time):
        self._clock = clock
        self._counters = {}
        self.lastReset = clock()

    def add(self, key1, key2, key3, value):
        counter = (
            self._counters.setdefault(key1, {}).setdefault(key2, {}).setdefault(key3, [0, 0])
        )
        counter[0] += 1
        counter[1] += value

    def reset(self):
        """
        Zero every counter, keeping the keys (so C{null} stays a
        C{Count=0,...} line), and restart the duration.
        """
        for byKey2 in self._counters.values():
            for byKey3 in byKey2.values():
                for counter in byKey3.values():
                    counter[0] = counter[1] = 0
        self.lastReset = self._clock()

    def _format(self, count, value):
        duration = int(self._clock() - self.lastReset)
        average = formatDecimal(value / count) if count else "invalid"
        rate = formatDecimal(count / duration) if duration else "invalid"
        return (
            f"Count={formatDecimal(count)},Value={formatDecimal(value)},"
            f"Value/Count={average},Count/Duration={rate},Duration={duration}"
        )

    def grouped(self, key1, key2=None):
        """
        Java C{getGroupedRealTimeStatResult}: L{None} if C{key1} was never
        recorded; with C{key2}, C{Invalid keyTwo:<key2>} if C{key1} was
        recorded but not for C{key2}.
        """
        byKey2 = self._counters.get(key1)
        if byKey2 is None:
            return None
        if key2 is None:
            counters = [c for byKey3 in byKey2.values() for c in byKey3.values()]
        elif key2 not in byKey2:
            return f"Invalid keyTwo:{key2}"
        else:
            counters = byKey2[key2].values()
        return self._format(sum(c[0] for c in counters), sum(c[1] for c in counters))


class StatsManager:
    """
    The broker's counters and the renderer of C{stats} replies.

    @ivar port: the bound server port, reported as C{port}.
    @ivar connections: the number of open client connections.
    """

    def __init__(self, config, storeManager, clock=time.time):
        self.config = config
        self.storeManager = storeManager
        self._clock = clock
        self.startTime = clock()
        self.port = config.serverPort
        self.connections = 0
        self.realtime = RealTimeStats(clock)
        self.cmdPut = self.cmdGet = self.cmdOffset = 0
        self.txBegin = self.txXABegin = self.txCommit = self.txRollback = 0
        self.getMiss = self.getFailed = self.putFailed = 0
        #: Gets answered 301 because they asked for a damaged range.
        self.damagedGets = 0
        #: Callables adding C{(key, value)} lines at the end of the summary
        #: (a replicating broker's state, docs/ha.md).
        self.summaryExtensions = []
        #: Items of ours, beside Java's, each a callable giving its lines.
        #: They are not in the summary, whose lines stay exactly the Java
        #: broker's; such an item shadows a topic of the same name, so the
        #: names are few and documented (docs/stats.md).
        self.extraItems = {}
        #: Counters that only grow, for the metrics endpoint (Prometheus
        #: computes rates): puts per C{(topic, partition string)}, bytes put
        #: per topic, gets per C{(topic, group)}.
        self.putsByPartition = Counter()
        self.putBytesByTopic = Counter()
        self.getsByGroup = Counter()
        self._statTopicsOf = None
        self._statTopics = {}

    def isStatTopic(self, topic):
        """
        Whether realtime statistics are collected for C{topic}: some topic
        section with C{stat=true} matches it (C{*} = any text, as in Java's
        C{makeTopicsPatSet}); a standalone broker uses C{[system] stat}.

        Answers are remembered until the topic sections are replaced (a
        reload), as this runs twice for every put.
        """
        topics = self.config.topics
        if self._statTopicsOf is not topics:
            self._statTopicsOf = topics
            self._statTopics = {}
        matched = self._statTopics.get(topic)
        if matched is None:
            matched = self._statTopics[topic] = self._matchesStatSection(topic)
        return matched or (self.config.acceptAnyTopic and self.config.stat)

    def _matchesStatSection(self, topic):
        return any(
            section.stat
            and (name == topic or ("*" in name and wildcardPattern(name).fullmatch(topic)))
            for name, section in self.config.topics.items()
        )

    def _record(self, key1, topic, key3, value=1):
        if self.isStatTopic(topic):
            self.realtime.add(key1, topic, key3, value)

    def statsPut(self, topic, partitionString):
        self.cmdPut += 1
        self.putsByPartition[topic, partitionString] += 1
        self._record(PUT, topic, partitionString)

    def statsPutMessage(self, topic, partitionString, size):
        """
        L{statsPut} and L{statsMessageSize} of one put, with one
        L{isStatTopic} for both: what every put costs.
        """
        self.cmdPut += 1
        self.putsByPartition[topic, partitionString] += 1
        self.putBytesByTopic[topic] += size
        if self.isStatTopic(topic):
            self.realtime.add(PUT, topic, partitionString, 1)
            self.realtime.add(MESSAGE_SIZE, topic, "*", size)

    def statsPutMessages(self, topic, partitionString, sizes):
        """
        L{statsPutMessage} of puts of C{sizes} bytes to one partition, with
        one L{isStatTopic} for all: a sync slave's batch.
        """
        count = len(sizes)
        self.cmdPut += count
        self.putsByPartition[topic, partitionString] += count
        self.putBytesByTopic[topic] += sum(sizes)
        if self.isStatTopic(topic):
            for size in sizes:
                self.realtime.add(PUT, topic, partitionString, 1)
                self.realtime.add(MESSAGE_SIZE, topic, "*", size)

    def statsSlavePut(self, topic, partitionString, count=1):
        """
        Messages an async slave replicated from its master: counted as puts,
        and in the realtime key C{put_slave} (Java C{SlaveStatsManager}).
        """
        self.cmdPut += count
        self.putsByPartition[topic, partitionString] += count
        self._record(PUT_SLAVE, topic, partitionString, count)

    def statsMessageSize(self, topic, size):
        self.putBytesByTopic[topic] += size
        self._record(MESSAGE_SIZE, topic, "*", size)

    def statsPutFailed(self, topic, partitionString):
        self.putFailed += 1
        self._record(PUT_FAILED, topic, partitionString)

    def statsGet(self, topic, group):
        self.cmdGet += 1
        key = (topic, group)
        if key not in self.getsByGroup and len(self.getsByGroup) >= MAX_COUNTED_GROUPS:
            key = (topic, OTHER_GROUPS)
        self.getsByGroup[key] += 1
        self._record(GET, topic, group)

    def statsGetMiss(self, topic, group):
        self.getMiss += 1
        self._record(GET_MISS, topic, group)

    def statsGetFailed(self, topic, group):
        self.getFailed += 1
        self._record(GET_FAILED, topic, group)

    def statsOffset(self, topic, group):
        self.cmdOffset += 1
        self._record(OFFSET, topic, group)

    def statsTxBegin(self, isXA):
        self.txBegin += 1
        if isXA:
            self.txXABegin += 1

    def statsTxCommit(self):
        self.txCommit += 1

    def statsTxRollback(self):
        self.txRollback += 1

    def _storesByTopic(self):
        byTopic = {}
        for topic, partition, store in self.storeManager.stores():
            byTopic.setdefault(topic, []).append((partition, store))
        return byTopic

    def topicCount(self):
        """
        Topics with a store plus configured topics without one.
        """
        withStore = set(self._storesByTopic())
        return len(withStore) + len([t for t in self.config.topics if t not in withStore])

    def statsInfo(self, item):
        """
        The body of the reply to C{stats <item>} for every item but
        C{config}.
        """
        lines = ["STATS\r\n"]
        if item is None or not item.strip():
            lines += self._summary()
        elif item == "topics":
            lines += self._topics()
        elif item == "offsets":
            lines += self._offsets()
        elif item == "realtime":
            lines += [
                statsLine(f"realtime_{name}", self.realtime.grouped(key))
                for name, key in _REALTIME_LINES
            ]
        elif item == "help":
            lines += [statsLine(*entry) for entry in _HELP]
        elif item == "damaged":
            lines += self._damaged()
        elif item == "reset":
            self.realtime.reset()
            lines.append(statsLine("reset", "ok"))
        elif item in self.extraItems:
            lines += [statsLine(name, value) for name, value in self.extraItems[item]()]
        else:
            lines += self._topic(item)
        lines.append("END\r\n")
        return "".join(lines)

    def _summary(self):
        totalMessages = sum(store.messageCount for _, _, store in self.storeManager.stores())
        return [
            statsLine(name, value)
            for name, value in (
                ("pid", os.getpid()),
                ("broker_id", self.config.brokerId),
                ("port", self.port),
                ("uptime", int(self._clock() - self.startTime)),
                ("version", METAQ_VERSION),
                ("slave", self.config.slaveId >= 0),
                ("curr_connections", self.connections),
                ("threads", threadCount()),
                ("cmd_put", self.cmdPut),
                ("cmd_get", self.cmdGet),
                ("cmd_offset", self.cmdOffset),
                ("tx_begin", self.txBegin),
                ("tx_xa_begin", self.txXABegin),
                ("tx_commit", self.txCommit),
                ("tx_rollback", self.txRollback),
                ("get_miss", self.getMiss),
                ("put_failed", self.putFailed),
                ("total_messages", totalMessages),
                ("topics", self.topicCount()),
                ("config_checksum", self.config.checksum),
                *(item for extension in self.summaryExtensions for item in extension()),
            )
        ]

    def _topics(self):
        byTopic = self._storesByTopic()
        lines = []
        for topic, stores in byTopic.items():
            topicConfig = self.config.topicConfig(topic)
            lines.append(statsLine(
                topic, "partitions", len(stores),
                "message_count", sum(s.messageCount for _, s in stores),
                "message_bytes", sum(s.sizeInBytes for _, s in stores),
                "accept_publish", topicConfig.acceptPublish,
                "accept_subscribe", topicConfig.acceptSubscribe,
            ))
        for topic in sorted(self.config.topics):
            if topic not in byTopic:
                lines.append(statsLine(topic, "*Empty*"))
        return lines

    def _damaged(self):
        """
        Ours, not Java's (kept out of the summary, which stays the Java
        broker's): the counts of damage (docs/disk-faults.md), then one
        line per read-only partition and one per damaged range.
        """
        stores = self.storeManager.stores()
        verifier = getattr(self.storeManager, "verifier", None)
        lines = [
            statsLine("read_only_partitions",
                      sum(store.readOnly is not None for _, _, store in stores)),
            statsLine("damaged_ranges", sum(len(store.damaged) for _, _, store in stores)),
            statsLine("damaged_gets", self.damagedGets),
            statsLine("verified_segments", verifier.segmentsVerified if verifier else 0),
            statsLine("verified_bytes", verifier.bytesVerified if verifier else 0),
        ]
        for topic, partition, store in stores:
            if store.readOnly is not None:
                lines.append(statsLine(topic, "part", partition, "read_only", store.readOnly))
            for start, end, reason in store.damaged:
                lines.append(statsLine(topic, "part", partition, "damaged", start, end,
                                       end - start, reason))
        return lines

    def _offsets(self):
        return [
            statsLine(topic, "part", partition, "min_offset", store.minOffset,
                      "max_offset", store.maxOffset)
            for topic, partition, store in self.storeManager.stores()
        ]

    def _topic(self, topic):
        stores = self._storesByTopic().get(topic)
        if stores:
            resultCode = 0
        elif topic in self.config.topics:
            resultCode = 2
        else:
            resultCode = 1
        stores = stores or []
        lines = [
            statsLine(topic),
            statsLine("resultCode", resultCode),
            statsLine("partitions", len(stores)),
            statsLine("message_count", sum(s.messageCount for _, s in stores)),
            statsLine("bytes", sum(s.sizeInBytes for _, s in stores)),
        ]
        lines += [
            statsLine(f"topic_realtime_{name}", self.realtime.grouped(key, topic))
            for name, key in _REALTIME_LINES
        ]
        return lines
