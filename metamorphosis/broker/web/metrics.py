"""
The broker's Prometheus metrics: a custom collector reading the broker's
counters and stores at each scrape (so nothing is counted twice and the
C{stats} command stays the one source), the store flush latency histogram,
and the process metrics of C{prometheus_client}.

Every metric is named C{metaq_...}; counters end in C{_total}, and units are
in the names (C{_bytes}, C{_seconds}).  Offsets are byte positions in a
partition, as everywhere in MetaQ.
"""

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

from metamorphosis import METAQ_VERSION
from metamorphosis.broker.stats import threadCount
from metamorphosis.broker.store.fsync import AdaptiveFsync, kernelFsyncOf

#: Seconds; an fsync takes from tens of microseconds (a cache) to seconds
#: (a saturated disk).
FSYNC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                 2.5, 5.0, 10.0)


def _number(value):
    """
    A replication stats value as a sample, or L{None} for text.
    """
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


class BrokerCollector:
    """
    Collects the metrics of one broker from its L{BrokerStatus}.
    """

    def __init__(self, status):
        self.status = status

    def collect(self):
        status = self.status
        broker = status.broker
        stats = broker.stats
        config = broker.config

        info = InfoMetricFamily("metaq_broker", "The broker's identity.")
        info.add_metric([], {"broker_id": str(config.brokerId), "version": METAQ_VERSION,
                             "role": status.role(), "url": status.url() or ""})
        yield info
        yield GaugeMetricFamily("metaq_start_time_seconds",
                                "When the broker started, seconds since the epoch.",
                                value=stats.startTime)
        yield GaugeMetricFamily("metaq_ready", "1 when the broker is ready (see /ready).",
                                value=float(not status.notReady()))
        yield GaugeMetricFamily("metaq_fenced",
                                "1 while a failover record names another master.",
                                value=float(status.fenced()))
        if broker.zookeeper is not None:
            yield GaugeMetricFamily("metaq_zookeeper_registered",
                                    "1 while the broker is registered in ZooKeeper.",
                                    value=float(broker.zookeeper.registered))
        yield GaugeMetricFamily("metaq_connections", "Open client connections.",
                                value=stats.connections)
        yield GaugeMetricFamily("metaq_topics", "Topics with a store or a section.",
                                value=stats.topicCount())
        yield GaugeMetricFamily("metaq_threads", "Threads of the broker process.",
                                value=threadCount())

        commands = CounterMetricFamily("metaq_commands", "Requests served, by command.",
                                       labels=["command"])
        for command, value in (("put", stats.cmdPut), ("get", stats.cmdGet),
                               ("offset", stats.cmdOffset)):
            commands.add_metric([command], value)
        yield commands
        for name, documentation, value in (
            ("metaq_get_misses", "Gets that found no message.", stats.getMiss),
            ("metaq_get_failures", "Gets answered with an error.", stats.getFailed),
            ("metaq_put_failures", "Puts refused or failed.", stats.putFailed),
        ):
            yield CounterMetricFamily(name, documentation, value=value)
        poller = broker.factory.idlePoller
        if poller is not None:
            yield CounterMetricFamily(
                "metaq_idle_poll_turns",
                "Reactor turns spent polling for a client's next request instead of sleeping "
                "(idlePollMicros).", value=poller.turns)
            yield CounterMetricFamily(
                "metaq_idle_poll_stops",
                "Pollings stopped early because another task wanted the CPU.", value=poller.stops)
            yield CounterMetricFamily(
                "metaq_idle_poll_holds",
                "Pollings stopped early because an fsync ran in a thread.", value=poller.holds)

        fsync = broker.storeManager.fsync
        if isinstance(fsync, AdaptiveFsync):
            rounds = CounterMetricFamily(
                "metaq_store_fsync_rounds",
                "Group commit and journal fsyncs, by where they ran (fsyncMethod=auto).",
                labels=["method"])
            current = GaugeMetricFamily(
                "metaq_store_fsync_method",
                "1 for where fsyncs run now (fsyncMethod=auto), 0 for the other.",
                labels=["method"])
            for method, count in sorted(fsync.rounds.items()):
                rounds.add_metric([method], count)
                current.add_metric([method], float(method == fsync.current))
            yield rounds
            yield current
            yield CounterMetricFamily(
                "metaq_store_fsync_switches",
                "How often fsyncMethod=auto moved the fsyncs between the kernel and a thread.",
                value=fsync.switches)

        kernel = kernelFsyncOf(fsync)
        if kernel is not None:
            yield CounterMetricFamily(
                "metaq_store_disk_keepawake_reads",
                "Reads sent to keep the disk awake between group commit rounds "
                "(diskKeepAwakeMicros).", value=kernel.awakeReads)

        puts = CounterMetricFamily("metaq_partition_put_messages",
                                   "Messages put, by topic and partition.",
                                   labels=["topic", "partition"])
        for (topic, partition), value in sorted(stats.putsByPartition.items()):
            puts.add_metric([topic, partition], value)
        yield puts
        putBytes = CounterMetricFamily("metaq_topic_put_bytes",
                                       "Message payload bytes put, by topic.", labels=["topic"])
        for topic, value in sorted(stats.putBytesByTopic.items()):
            putBytes.add_metric([topic], value)
        yield putBytes
        gets = CounterMetricFamily("metaq_topic_get_requests",
                                   "Get requests, by topic and consumer group.",
                                   labels=["topic", "group"])
        for (topic, group), value in sorted(stats.getsByGroup.items()):
            gets.add_metric([topic, group], value)
        yield gets

        yield from self._partitions(broker)
        yield from self._transactions(broker)
        yield from self._replication(broker)
        yield from self._consumerLag()

    def _partitions(self, broker):
        labels = ["topic", "partition"]
        families = {
            "messages": GaugeMetricFamily("metaq_partition_messages",
                                          "Messages in the partition's files.", labels=labels),
            "size": GaugeMetricFamily("metaq_partition_size_bytes",
                                      "Bytes in the partition's files.", labels=labels),
            "min": GaugeMetricFamily("metaq_partition_min_offset",
                                     "The partition's first offset (a byte position).",
                                     labels=labels),
            "max": GaugeMetricFamily("metaq_partition_max_offset",
                                     "The partition's end offset: what is flushed and "
                                     "readable (a byte position).", labels=labels),
            "segments": GaugeMetricFamily("metaq_partition_segments",
                                          "Segment files of the partition.", labels=labels),
        }
        brokerId = broker.config.brokerId
        for topic, partition, store in sorted(broker.storeManager.stores(),
                                             key=lambda entry: entry[:2]):
            values = [topic, "%d-%d" % (brokerId, partition)]
            families["messages"].add_metric(values, store.messageCount)
            families["size"].add_metric(values, store.sizeInBytes)
            families["min"].add_metric(values, store.minOffset)
            families["max"].add_metric(values, store.maxOffset)
            families["segments"].add_metric(values, len(store.segments))
        yield from families.values()

    def _transactions(self, broker):
        stats = broker.stats
        for name, documentation, value in (
            ("metaq_transactions_begun", "Transactions begun (local and XA).", stats.txBegin),
            ("metaq_xa_transactions_begun", "XA transactions begun.", stats.txXABegin),
            ("metaq_transactions_committed", "Transactions committed.", stats.txCommit),
            ("metaq_transactions_rolled_back", "Transactions rolled back.", stats.txRollback),
        ):
            yield CounterMetricFamily(name, documentation, value=value)
        states = GaugeMetricFamily("metaq_xa_transactions",
                                   "Open XA transactions, by state.", labels=["state"])
        for state, count in sorted(self.status.xaStates().items()):
            states.add_metric([state], count)
        yield states
        yield GaugeMetricFamily(
            "metaq_heuristic_transactions",
            "XA transactions completed by an operator and not yet forgotten.",
            value=len(broker.transactions.heuristicTransactions))

    def _replication(self, broker):
        if broker.replication is None:
            return
        for key, value in broker.replication.statsItems():
            number = _number(value)
            if key == "slave_link":
                yield GaugeMetricFamily("metaq_replication_slave_link_up",
                                        "1 while the master's link to its slave is up.",
                                        value=float(value == "connected"))
            elif key == "replication_lag_bytes":
                yield GaugeMetricFamily("metaq_replication_lag_bytes",
                                        "Bytes the slave is behind its master.", value=number)
            elif number is not None:
                yield GaugeMetricFamily("metaq_replication_" + key,
                                        "Replication: %s (as in stats)." % (key,), value=number)
        lags = GaugeMetricFamily("metaq_replication_partition_lag_bytes",
                                 "Bytes an async slave's partition is behind its master's.",
                                 labels=["topic", "partition"])
        brokerId = broker.config.brokerId
        for topic, partition, lag in sorted(broker.replication.partitionLags()):
            lags.add_metric([topic, "%d-%d" % (brokerId, partition)], lag)
        yield lags

    def _consumerLag(self):
        groups = self.status.lagged(self.status.groups.cached())
        if groups is None:
            return
        lag = GaugeMetricFamily(
            "metaq_consumer_lag_bytes",
            "Bytes between a group's committed offset and the end of one of this "
            "broker's partitions (read from ZooKeeper at most every few seconds).",
            labels=["group", "topic", "partition"])
        for group in groups:
            for row in group["partitions"]:
                if row["lag"] is not None:
                    lag.add_metric([group["group"], row["topic"], row["partition"]], row["lag"])
        yield lag


def brokerRegistry(status):
    """
    A registry of one broker's metrics (its own, not the global one: tests
    run several brokers in one process).

    @return: C{(registry, fsync histogram)}.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BrokerCollector(status))
    ProcessCollector(registry=registry)
    fsyncs = Histogram("metaq_store_flush_duration_seconds",
                       "How long each fsync of a partition's segment took.",
                       buckets=FSYNC_BUCKETS, registry=registry)
    return registry, fsyncs
