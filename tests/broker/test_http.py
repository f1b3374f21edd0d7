"""
The broker's HTTP endpoint (metrics, health, readiness, the dashboard's
data), by real HTTP requests to a real broker process.
"""

from kazoo.client import KazooClient
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import endpoints, reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from metamorphosis.broker.config import standaloneConfig
from metamorphosis.broker.service import BrokerService, Options
from metamorphosis.broker.web.metrics import brokerRegistry
from metamorphosis.broker.web.status import BrokerStatus
from metamorphosis.ha.interfaces import IReplication
from tests.broker.httpsupport import HttpBroker
from tests.tools.support import closedPort
from tests.waiting import waitFor
from tests.zookeeper import uniqueRoot, zookeeperAddress


def samples(text):
    """
    Parse a Prometheus exposition (failing on a malformed one): sample
    name -> list of C{(labels, value)}.
    """
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def value(found, name, **labels):
    matching = [v for have, v in found.get(name, []) if all(have.get(k) == w for k, w in labels.items())]
    assert len(matching) == 1, (name, labels, found.get(name))
    return matching[0]


class OptionsTests(TestCase):
    def endpoint(self, ini, *argv):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[system]\n" + ini)
        options = Options()
        options.parseOptions(["--config", path, *argv])
        return options["http"]

    def test_offWhenUnset(self):
        """
        Without dashboardHttpPort there is no HTTP endpoint.
        """
        self.assertIsNone(self.endpoint(""))

    def test_dashboardHttpPort(self):
        """
        dashboardHttpPort turns it on, on that TCP port.
        """
        self.assertEqual(self.endpoint("dashboardHttpPort=8120\n"), "tcp:8120")

    def test_override(self):
        """
        --http overrides the key: an endpoint, a bare port, or none.
        """
        self.assertEqual(self.endpoint("dashboardHttpPort=8120\n", "--http",
                                       "tcp:9000:interface=127.0.0.1"),
                         "tcp:9000:interface=127.0.0.1")
        self.assertEqual(self.endpoint("", "--http", "9001"), "tcp:9001")
        self.assertIsNone(self.endpoint("dashboardHttpPort=8120\n", "--http", "none"))


class EndpointTests(TestCase):
    def test_withZooKeeper(self):
        """
        A broker registered in ZooKeeper: /health and /ready answer 200;
        /metrics is a valid exposition with the partitions' puts, sizes and
        offsets, the flush latency histogram, connections, ZooKeeper and
        process metrics; /status.json shows the topics and a consumer
        group from ZooKeeper with its owner and lag.
        """
        async def check():
            root = uniqueRoot()
            broker = await HttpBroker.start(self, {"web-test": 2}, zookeeperAddress(), root)
            code, health = await broker.getJSON("health")
            self.assertEqual((code, health), (200, {"status": "ok"}))

            async def ready():
                return (await broker.getJSON("ready"))[0] == 200
            await waitFor(ready, what="/ready answers 200")
            self.assertEqual((await broker.getJSON("ready"))[1], {"ready": True, "reasons": []})

            await broker.put("web-test", 0, [b"a" * 10, b"b" * 10, b"c" * 10])
            await broker.put("web-test", 1, [b"d" * 10])
            # A group that consumed one message of 3-0, owned by a consumer.
            zk = KazooClient(hosts=zookeeperAddress())
            await deferToThread(zk.start, 10)
            self.addCleanup(deferToThread, zk.stop)
            group = root + "/consumers/web-group"
            await deferToThread(zk.create, group + "/offsets/web-test/3-0", b"7-30",
                                makepath=True)
            await deferToThread(zk.create, group + "/owners/web-test/3-0", b"web-group_c1",
                                makepath=True)
            await deferToThread(zk.create, group + "/ids/web-group_c1", b"web-test",
                                makepath=True)

            code, headers, body = await broker.get("metrics")
            self.assertEqual(code, 200)
            self.assertIn(b"text/plain", headers.getRawHeaders(b"content-type")[0])
            found = samples(body.decode("utf-8"))
            self.assertEqual(value(found, "metaq_partition_put_messages_total",
                                   topic="web-test", partition="3-0"), 3)
            self.assertEqual(value(found, "metaq_partition_messages",
                                   topic="web-test", partition="3-1"), 1)
            maxOffset = value(found, "metaq_partition_max_offset", topic="web-test",
                              partition="3-0")
            self.assertEqual(maxOffset, value(found, "metaq_partition_size_bytes",
                                              topic="web-test", partition="3-0"))
            self.assertGreater(maxOffset, 30)
            # A scrape reads the groups itself (nobody looked at the page).
            self.assertEqual(value(found, "metaq_consumer_lag_bytes", group="web-group",
                                   topic="web-test", partition="3-0"), maxOffset - 30)
            self.assertEqual(value(found, "metaq_commands_total", command="put"), 4)
            self.assertGreaterEqual(value(found, "metaq_store_flush_duration_seconds_count"), 2)
            # fsyncMethod=auto: in the kernel from the start; a thread is
            # probed only after 16 rounds.
            self.assertGreaterEqual(value(found, "metaq_store_fsync_rounds_total", method="kernel"),
                                    2)
            self.assertEqual(value(found, "metaq_store_fsync_rounds_total", method="thread"), 0)
            self.assertEqual(value(found, "metaq_store_fsync_method", method="kernel"), 1)
            self.assertEqual(value(found, "metaq_store_fsync_method", method="thread"), 0)
            self.assertEqual(value(found, "metaq_store_fsync_switches_total"), 0)
            self.assertGreaterEqual(value(found, "metaq_store_disk_keepawake_reads_total"), 0)
            self.assertEqual(value(found, "metaq_zookeeper_registered"), 1)
            self.assertEqual(value(found, "metaq_ready"), 1)
            self.assertEqual(value(found, "metaq_fenced"), 0)
            self.assertEqual(value(found, "metaq_broker_info", broker_id="3", role="master"), 1)
            self.assertGreater(value(found, "process_resident_memory_bytes"), 0)
            self.assertGreater(value(found, "process_open_fds"), 0)
            self.assertIn("process_cpu_seconds_total", found)

            code, status = await broker.getJSON("status.json")
            self.assertEqual(code, 200)
            self.assertEqual(status["broker"]["id"], 3)
            self.assertEqual(status["broker"]["url"], "meta://127.0.0.1:%d" % (broker.port,))
            self.assertTrue(status["broker"]["zookeeper"]["registered"])
            [topic] = [t for t in status["topics"] if t["topic"] == "web-test"]
            self.assertEqual([(p["partition"], p["messages"]) for p in topic["partitions"]],
                             [("3-0", 3), ("3-1", 1)])
            [group] = status["groups"]
            self.assertEqual(group["group"], "web-group")
            self.assertEqual(group["consumers"], ["web-group_c1"])
            self.assertEqual(group["partitions"], [{
                "topic": "web-test", "partition": "3-0", "owner": "web-group_c1",
                "committed": 30, "maxOffset": maxOffset, "lag": maxOffset - 30}])

            # The lag is in the metrics too.
            found = samples((await broker.get("metrics"))[2].decode("utf-8"))
            self.assertEqual(value(found, "metaq_consumer_lag_bytes", group="web-group",
                                   topic="web-test", partition="3-0"), maxOffset - 30)

            code, _, _ = await broker.get("nosuch")
            self.assertEqual(code, 404)
        return ensureDeferred(check())

    def test_notReady(self):
        """
        A broker whose ZooKeeper does not answer serves (/health 200) but
        is not ready: /ready answers 503 with the reason, and the page's
        data says so.
        """
        async def check():
            broker = await HttpBroker.start(self, {"web-test": 1},
                                            "127.0.0.1:%d" % (closedPort(),))
            code, health = await broker.getJSON("health")
            self.assertEqual(code, 200)
            code, ready = await broker.getJSON("ready")
            self.assertEqual((code, ready), (503, {"ready": False, "reasons": [
                "not registered in ZooKeeper"]}))
            code, status = await broker.getJSON("status.json")
            self.assertEqual(status["broker"]["notReady"], ["not registered in ZooKeeper"])
            self.assertFalse(status["broker"]["ready"])
        return ensureDeferred(check())


@implementer(IReplication)
class LaggingSlave:
    """
    An async slave's replication as the broker sees it, two partitions
    behind.
    """

    slave = True

    def install(self, factory):
        pass

    def configure(self, config):
        pass

    def makeService(self, broker):
        return None

    def statsItems(self):
        return [("replication_lag_bytes", 700)]

    def stateItems(self):
        return self.statsItems()

    def partitionLags(self):
        return [("t", 1, 200), ("t", 0, 500)]


class CollectorTests(TestCase):
    def test_replicationLag(self):
        """
        A slave's lag, in all and per partition, and its role.
        """
        broker = BrokerService(standaloneConfig(self.mktemp()), endpoints.TCP4ServerEndpoint(
            reactor, 0, interface="127.0.0.1"), reactor, replication=LaggingSlave())
        registry, _ = brokerRegistry(BrokerStatus(broker))
        found = samples(generate_latest(registry).decode("utf-8"))
        self.assertEqual(value(found, "metaq_replication_lag_bytes"), 700)
        self.assertEqual(value(found, "metaq_replication_partition_lag_bytes", topic="t",
                               partition="0-0"), 500)
        self.assertEqual(value(found, "metaq_replication_partition_lag_bytes", topic="t",
                               partition="0-1"), 200)
        self.assertEqual(value(found, "metaq_broker_info", role="slave"), 1)

    def test_idlePoll(self):
        """
        A broker that polls (C{idlePollMicros}) counts its polling turns
        and early stops; one that does not has no such metrics.
        """
        config = standaloneConfig(self.mktemp())
        broker = BrokerService(config, endpoints.TCP4ServerEndpoint(
            reactor, 0, interface="127.0.0.1"), reactor)
        registry, _ = brokerRegistry(BrokerStatus(broker))
        self.assertNotIn("metaq_idle_poll_turns_total", samples(generate_latest(registry).decode()))
        config = standaloneConfig(self.mktemp())
        config.idlePollMicros = 1000
        broker = BrokerService(config, endpoints.TCP4ServerEndpoint(
            reactor, 0, interface="127.0.0.1"), reactor)
        poller = broker.factory.idlePoller
        poller.turns, poller.stops, poller.holds = 12, 3, 5
        registry, _ = brokerRegistry(BrokerStatus(broker))
        found = samples(generate_latest(registry).decode())
        self.assertEqual(value(found, "metaq_idle_poll_turns_total"), 12)
        self.assertEqual(value(found, "metaq_idle_poll_stops_total"), 3)
        self.assertEqual(value(found, "metaq_idle_poll_holds_total"), 5)
