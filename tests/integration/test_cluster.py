"""
Three broker processes (ids 0, 1, 2, the same topic with three partitions
each) registered in ZooKeeper, two Python producers under load and a
consumer group of three Python consumers, through the failures a cluster
meets: a broker killed with SIGKILL and started again, the ZooKeeper leader
killed and then a follower (the ensemble below quorum), and a broker cut
off from ZooKeeper but not from its clients until its session expires.

Each scenario checks that every acknowledged message is consumed (at least
once: duplicates are counted and reported) and prints what it measured
(the figures of docs/cluster.md).  The broker and ensemble scenarios each
start a three-server ZooKeeper ensemble of their own (tests/ensemble.py);
the cut-off one uses the suite's ZooKeeper through a proxy.
"""

import json
import os
import random
import re
import time

from kazoo.protocol.states import EventType
from twisted.internet import defer, reactor, threads, utils
from twisted.logger import Logger
from twisted.trial.unittest import SkipTest, TestCase

from metamorphosis.broker.config import loadConfig
from tests.broker.client import connect
from tests.ensemble import SCRIPT, Ensemble
from tests.ha.processes import CuttableProxy
from tests.integration.cluster import Cluster, ClusterBroker, Group, readNode, sleep, waitAllConsumed
from tests.waiting import waitFor
from tests.zookeeper import uniqueRoot, zookeeperAddress

log = Logger()
ROOT = os.path.dirname(os.path.dirname(SCRIPT))


def report(name, **figures):
    """
    Print a scenario's measurements (and log them, for runs under -j).
    """
    text = "%s: %s" % (name, ", ".join("%s=%s" % item for item in figures.items()))
    print("\n" + text)
    log.info("{text}", text=text)


def since(start):
    return round(time.monotonic() - start, 2)


class _ClusterCase(TestCase):
    timeout = 400

    async def startCluster(self, zkConnect):
        self.root = uniqueRoot("metaq-cluster")
        self.cluster = Cluster(self, zkConnect, self.root)
        await self.cluster.start()
        self.group = Group(self, zkConnect, self.root, "cluster")
        await self.group.start()
        await waitFor(lambda: self.group.balancedOver(self.cluster.partitions()),
                      timeout=60, what="the group balanced over 9 partitions")
        self.producers = [await self.cluster.producer("p%d" % n) for n in range(2)]
        await self.cluster.waitSeen(self.producers, self.cluster.partitions())
        await self.waitAcked(20)

    async def waitAcked(self, more, what="sends acknowledged"):
        """
        Until every producer has C{more} more acknowledged sends.
        """
        targets = [len(p.acked) + more for p in self.producers]
        await waitFor(lambda: all(len(p.acked) >= t for p, t in zip(self.producers, targets)),
                      timeout=60, what=what)

    async def finish(self, name, **figures):
        """
        Stop producing, wait until every acknowledged message is consumed,
        report.
        """
        for producer in self.producers:
            await producer.stop()
        acked = await waitAllConsumed(self.group, self.producers)
        retried = set().union(*(p.retried for p in self.producers))
        # A payload sent again after a failure may have been stored by
        # both attempts (the broker died after storing, before replying);
        # other duplicates are deliveries repeated by the group.
        report(name, acknowledged=len(acked), failedAttempts=sum(len(p.failures) for p in self.producers),
               consumed=sum(self.group.received.values()), duplicates=self.group.duplicates(),
               duplicatesOfRetriedSends=self.group.duplicates(among=retried), **figures)
        return acked

    async def registered(self, broker):
        data = await readNode(self.cluster.factory.zookeeper,
                              "%s/brokers/ids/%d/master" % (self.root, broker.brokerId))
        return data == broker.url.encode()


class BrokerLossTests(_ClusterCase):
    """
    A broker killed with SIGKILL under load, then started again.
    """

    async def test_killOneBroker(self):
        ensemble = Ensemble(self.mktemp(), 3)
        self.addCleanup(ensemble.stop)
        await self.startCluster(await ensemble.start())
        cluster, group, producers = self.cluster, self.group, self.producers
        victim = cluster.brokers[1]
        survivors = [b for b in cluster.brokers if b is not victim]

        killedAt = time.monotonic()
        await victim.kill()
        await waitFor(lambda: all(any(t > killedAt for t, _ in p.ackTimes) for p in producers),
                      timeout=60, what="every producer acknowledged after the kill")
        sendingAgain = since(killedAt)
        await cluster.waitSeen(producers, cluster.partitions(survivors),
                               what="producers dropping the killed broker")
        viewChanged = since(killedAt)
        await waitFor(lambda: group.balancedOver(cluster.partitions(survivors)),
                      timeout=60, what="the group rebalanced over the survivors")
        rebalanced = since(killedAt)
        # Sends go on; any send caught by the kill was retried, and once
        # the view changed the failures stop.
        await self.waitAcked(30, "sends acknowledged by the survivors")
        calm = time.monotonic()
        await self.waitAcked(30, "more sends")
        # (A timeout is the loaded machine, not the cluster: retried too.)
        self.assertEqual([(t, e) for p in producers for t, e in p.failuresSince(calm)
                          if not e.startswith("MetaTimeoutError")], [])
        failures = [t for p in producers for t, _ in p.failuresSince(killedAt)]
        lastFailure = round(max(failures) - killedAt, 2) if failures else 0.0
        self.assertEqual({p.brokerId for p in producers[0].acked.values()} - {0, 1, 2}, set())

        restartedAt = time.monotonic()
        await victim.start()
        await cluster.waitSeen(producers, cluster.partitions(), what="producers seeing it back")
        seenBack = since(restartedAt)
        await waitFor(lambda: all(p.ackedBy(victim.brokerId, since=restartedAt) > 0 for p in producers),
                      timeout=60, what="the restarted broker used again")
        usedBack = since(restartedAt)
        await waitFor(lambda: group.balancedOver(cluster.partitions()),
                      timeout=60, what="the group rebalanced over 9 partitions")
        rebalancedBack = since(restartedAt)
        await self.finish(
            "broker loss", everyProducerSendingAfter=sendingAgain, producersViewChangedAfter=viewChanged, lastFailedSendAfter=lastFailure,
            failedAttemptsAfterKill=len(failures), groupRebalancedAfter=rebalanced,
            seenAgainAfterRestart=seenBack, usedAgainAfterRestart=usedBack,
            groupRebalancedAfterRestart=rebalancedBack)


class EnsembleLossTests(_ClusterCase):
    """
    A three-server ZooKeeper ensemble loses its leader, then a follower.
    """

    async def test_killLeaderThenFollower(self):
        ensemble = Ensemble(self.mktemp(), 3)
        self.addCleanup(ensemble.stop)
        await ensemble.start()
        await self.startCluster(ensemble.connect)
        cluster, group, producers = self.cluster, self.group, self.producers

        async def zkStates():
            return [(await cluster.stats(b)).get("zk_state") for b in cluster.brokers]

        async def allRegistered():
            stats = [await cluster.stats(b) for b in cluster.brokers]
            return all(s.get("zk_registered") == "true" for s in stats)

        # The leader goes: an election among the other two.
        leader = await ensemble.leader()
        self.assertIsNotNone(leader)
        killedAt = time.monotonic()
        await ensemble.kill(leader)
        await self.waitAcked(20, "sends acknowledged during the election")
        await waitFor(ensemble.leader, timeout=60, what="a new leader")
        elected = since(killedAt)
        await waitFor(allRegistered, timeout=60, what="brokers registered after the election")
        reconnected = since(killedAt)
        for broker in cluster.brokers:
            self.assertTrue(await self.registered(broker))
        await self.waitAcked(20)

        # A follower goes too: one server of three, no quorum.  ZooKeeper
        # is unusable, the data paths are not.
        follower = (await ensemble.followers())[0]
        await ensemble.kill(follower)
        lostAt = time.monotonic()
        await waitFor(
            lambda: defer.ensureDeferred(zkStates()).addCallback(
                lambda states: all(s == "suspended" for s in states)),
            timeout=60, what="brokers reporting ZooKeeper down in stats")
        suspended = since(lostAt)
        received = sum(group.received.values())
        for broker in cluster.brokers:
            before = sum(p.ackedBy(broker.brokerId) for p in producers)
            await waitFor(lambda: sum(p.ackedBy(broker.brokerId) for p in producers) >= before + 10,
                          timeout=60, what="broker %d storing without ZooKeeper" % broker.brokerId)
        await waitFor(lambda: sum(group.received.values()) > received + 30,
                      timeout=60, what="consumption without ZooKeeper")
        # A whole session timeout without ZooKeeper: the brokers say so,
        # and still serve.
        await waitFor(
            lambda: defer.ensureDeferred(zkStates()).addCallback(
                lambda states: all(s == "unreachable" for s in states)),
            timeout=60, what="brokers reporting ZooKeeper unreachable in stats")
        unreachable = since(lostAt)
        await self.waitAcked(10, "sends acknowledged without ZooKeeper")
        for broker in cluster.brokers:
            self.assertIn("Lost the ZooKeeper connection; reconnecting, still serving", broker.output)
            self.assertIn("ZooKeeper unreachable for longer than the session timeout", broker.output)
        withoutQuorum = since(lostAt)

        # The ensemble comes back: every broker registered again.
        await ensemble.restart(follower)
        quorumAt = time.monotonic()
        await ensemble.restart(leader)
        await waitFor(allRegistered, timeout=60, what="brokers registered after the quorum returned")
        reregistered = since(quorumAt)
        self.assertEqual(await zkStates(), ["connected"] * 3)
        for broker in cluster.brokers:
            self.assertTrue(await self.registered(broker))
        await self.waitAcked(20)
        await self.finish(
            "ZooKeeper leader then follower lost", newLeaderAfter=elected,
            brokersRegisteredAfterLeaderLoss=reconnected,
            suspendedAfter=suspended, unreachableAfter=unreachable,
            servedWithoutQuorumFor=withoutQuorum,
            reregisteredAfterQuorum=reregistered)


class SoakTests(_ClusterCase):
    """
    Opt-in (C{METAQ_CLUSTER_SOAK=<seconds>}, C{METAQ_CLUSTER_SEED} to
    replay the choices of a run): for that long, kill a broker
    or a ZooKeeper server (the leader half of the time) with SIGKILL, keep
    it down for a few seconds, start it again, wait until the cluster is
    whole again, and repeat; then check that every acknowledged message was
    consumed.
    """

    seconds = float(os.environ.get("METAQ_CLUSTER_SOAK") or 0)
    timeout = seconds + 600

    async def test_repeatedFailures(self):
        seconds = self.seconds
        if not seconds:
            raise SkipTest("set METAQ_CLUSTER_SOAK=<seconds> to run the soak test")
        seed = os.environ.get("METAQ_CLUSTER_SEED") or str(random.randrange(10 ** 6))
        log.info("soak: METAQ_CLUSTER_SEED={seed}", seed=seed)
        chance = random.Random(seed)
        ensemble = Ensemble(self.mktemp(), 3)
        self.addCleanup(ensemble.stop)
        await self.startCluster(await ensemble.start())
        cluster, group, producers = self.cluster, self.group, self.producers

        async def whole():
            for broker in cluster.brokers:
                stats = await cluster.stats(broker)
                if stats.get("zk_registered") != "true":
                    return False
            return (group.balancedOver(cluster.partitions())
                    and all(cluster.seen(p) == set(cluster.partitions()) for p in producers))

        end = time.monotonic() + seconds
        rounds = []
        while time.monotonic() < end:
            down = chance.uniform(0.5, 6.0)
            if chance.random() < 0.5:
                broker = chance.choice(cluster.brokers)
                what = "broker %d" % (broker.brokerId,)
                await broker.kill()
                await sleep(down)
                await broker.start()
            else:
                server = await ensemble.leader() if chance.random() < 0.5 else chance.randint(1, 3)
                what = "zookeeper %s" % (server,)
                await ensemble.kill(server)
                await sleep(down)
                await ensemble.restart(server)
            started = time.monotonic()
            await waitFor(whole, timeout=120, what="the cluster whole again after %s" % (what,))
            rounds.append("%s down %.1f s, whole %.1f s later" % (what, down, since(started)))
            log.info("soak: {round}", round=rounds[-1])
            await self.waitAcked(10)
        await self.finish("soak", rounds=len(rounds), seconds=seconds, seed=seed)


class CutOffTests(TestCase):
    """
    A broker that loses ZooKeeper (a proxy between them is cut) but not its
    clients, while another broker with the same id starts.
    """

    timeout = 300
    topics = (("cluster", 2),)

    async def test_sessionExpiryAndDuplicateId(self):
        zkConnect = zookeeperAddress()
        host, port = zkConnect.split(",")[0].rsplit(":", 1)
        proxy = CuttableProxy(int(port))
        self.addCleanup(proxy.stop)
        root = uniqueRoot("metaq-cutoff")
        cluster = Cluster(self, zkConnect, root, self.topics, brokers=0)
        await cluster.start()
        zookeeper = cluster.factory.zookeeper
        masterPath = "%s/brokers/ids/0/master" % (root,)
        pubPath = "%s/brokers/topics-pub/cluster/0-m" % (root,)

        # Every value ids/0/master takes, and whose session holds it.
        history = []

        def watch(data, stat, event=None):
            # The watch reads the node after the event that fired it: when
            # the next holder has already created it again, the deletion
            # shows only as the event.
            if event is not None and event.type == EventType.DELETED:
                history.append(None)
            history.append(None if stat is None else (data, stat.ephemeralOwner))

        await threads.deferToThread(zookeeper.DataWatch, masterPath, watch)

        old = ClusterBroker(self, 0, "127.0.0.1:%d" % (proxy.address,), root, self.topics)
        await old.start()
        await waitFor(lambda: readNode(zookeeper, masterPath).addCallback(
            lambda data: data == old.url.encode()), what="the first broker registered")
        client = await connect(reactor, old.port)
        self.addCleanup(client.transport.loseConnection)

        cutAt = time.monotonic()
        proxy.cutLink()
        await waitFor(lambda: readNode(zookeeper, masterPath).addCallback(
            lambda data: data is None), timeout=60, what="the session expired")
        expired = since(cutAt)
        self.assertIsNone(await readNode(zookeeper, pubPath))
        await waitFor(lambda: cluster.factory.getStats(old.url, "zookeeper").addCallback(
            lambda s: s["zk_state"] == "unreachable"), what="the broker noticing the expiry")
        stats = await cluster.factory.getStats(old.url, "zookeeper")
        self.assertEqual(stats["zk_registered"], "false")
        self.assertIn("ZooKeeper unreachable for longer than the session timeout", old.output)
        # Its clients are still served.
        reply = await client.put("cluster", 0, b"still serving", 1)
        self.assertEqual(reply.code, 200)

        # Another broker with id 0 starts and takes the free id.
        new = ClusterBroker(self, 0, zkConnect, root, self.topics)
        await new.start()
        await waitFor(lambda: readNode(zookeeper, masterPath).addCallback(
            lambda data: data == new.url.encode()), what="the second broker registered")
        # Its topics follow its id in the registration.
        await waitFor(lambda: readNode(zookeeper, pubPath), what="the second broker's topic")

        # The first one reaches ZooKeeper again: it must not take the id back.
        proxy.heal()
        await waitFor(lambda: "Broker id 0 is taken" in old.output, timeout=60,
                      what="the first broker seeing the conflict")
        stats = await cluster.factory.getStats(old.url, "zookeeper")
        self.assertEqual((stats["zk_state"], stats["zk_registered"]), ("connected", "false"))
        self.assertEqual(await readNode(zookeeper, masterPath), new.url.encode())
        self.assertEqual(json.loads(await readNode(zookeeper, pubPath))["broker"], "0-m")

        # The second one dies: once its session expires, the first one
        # (retrying) registers again.
        killedAt = time.monotonic()
        await new.kill()
        await waitFor(lambda: readNode(zookeeper, masterPath).addCallback(
            lambda data: data == old.url.encode()), timeout=60, what="the first broker back")
        takenBack = since(killedAt)
        await waitFor(lambda: cluster.factory.getStats(old.url, "zookeeper").addCallback(
            lambda s: s["zk_registered"] == "true"), what="the first broker registered again")
        # The watch runs in kazoo's thread and reads the node again after
        # each event, so it can report the last holder after our own read.
        await waitFor(lambda: history[-1] is not None and history[-1][0] == old.url.encode(),
                      what="the watch seeing the first broker back")

        # One holder at a time: the node went away between two holders.
        urls = [None if entry is None else entry[0].decode() for entry in history]
        holders = [u for i, u in enumerate(urls) if i == 0 or u != urls[i - 1]]
        self.assertEqual(holders, [None, old.url, None, new.url, None, old.url])
        report("cut off from ZooKeeper", sessionExpiredAfterCut=expired,
               reRegisteredAfterHolderDied=takenBack, holders="->".join(str(u) for u in holders))



class DocumentationTests(TestCase):
    """
    The examples of docs/cluster.md run as written.
    """

    timeout = 180
    docs = os.path.join(ROOT, "docs", "cluster.md")

    def blocks(self, language):
        with open(self.docs) as f:
            text = f.read()
        return re.findall(r"```%s\n(.*?)```" % (language,), text, re.S)

    def test_brokerConfiguration(self):
        """
        The broker section of a cluster member loads as meant.
        """
        [ini] = self.blocks("ini")
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(ini)
        config = loadConfig(path)
        self.assertEqual((config.brokerId, config.hostName), (1, "10.0.0.12"))
        self.assertEqual(config.zookeeper.zkConnect, "10.0.0.1:2181,10.0.0.2:2181,10.0.0.3:2181")
        self.assertEqual(config.topicConfig("orders").numPartitions, 3)

    async def test_ensembleScript(self):
        """
        The scripts/zookeeper.sh session, in a directory of the test's own.
        """
        [script] = self.blocks("sh")
        directory = os.path.abspath(self.mktemp())
        script = script.replace("/tmp/ens", directory)
        script = "set -e\ncd %s\n%s\necho \"$connect\"\n" % (ROOT, script)
        self.addCleanup(utils.getProcessValue, "/bin/bash", (SCRIPT, "stop", directory))
        out, err, code = await utils.getProcessOutputAndValue("/bin/bash", ("-c", script),
                                                              env=os.environ)
        self.assertEqual(code, 0, err)
        lines = out.decode().split()
        self.assertIn(lines[0], ("leader", "follower"))
        self.assertEqual(len(lines[-1].split(",")), 3)
