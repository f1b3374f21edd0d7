"""
Asynchronous replication with real processes and a real ZooKeeper: a master
and its metaslave started by C{twistd metaq}, a producer on a real socket,
crashes with SIGKILL.
"""

import os

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.ha.processes import Broker, CuttableProxy, serverIni, sleep
from tests.waiting import waitFor
from tests.zookeeper import uniqueRoot, zookeeperAddress

TOPICS = (("meta-test", 1), ("test", 2))


class _AsyncCase(TestCase):
    """
    A master and its metaslave in a ZooKeeper root of their own, and a
    producer connected to the master.
    """

    timeout = 90

    def setUp(self):
        self.root = uniqueRoot("ha-async")
        self.zk = KazooClient(hosts=zookeeperAddress())
        self.zk.start(10)
        self.addCleanup(self.zk.stop)
        self.addCleanup(self.zk.delete, self.root, recursive=True)
        self.opaque = 0
        self.acknowledged = set()

    @defer.inlineCallbacks
    def startMaster(self, topics=TOPICS):
        self.master = Broker(self, "master", serverIni(2, topics, zookeeperAddress(), self.root))
        yield self.master.start()
        self.producer = yield self.master.connect()
        self.addCleanup(lambda: self.producer.transport.loseConnection())

    def startSlave(self, topics=TOPICS):
        self.slave = Broker(
            self,
            "slave",
            serverIni(2, topics, zookeeperAddress(), self.root),
            "async_slave.properties",
            "slaveId=0\nslaveMaxDelayInMills=100\n",
        )
        return self.slave.start()

    def put(self, topic, partition, payload):
        self.opaque += 1

        def replied(reply):
            if reply.code == 200:
                self.acknowledged.add((topic, int(reply.body.split()[1]), int(reply.body.split()[0])))
            return reply

        return self.producer.put(topic, partition, payload, self.opaque).addCallback(replied)

    def putMany(self, count, prefix=b"m"):
        puts = []
        for i in range(count):
            topic, partition = [("meta-test", 0), ("test", 0), ("test", 1)][i % 3]
            puts.append(self.put(topic, partition, b"%s-%d-%s" % (prefix, i, b"y" * (i % 70))))
        return defer.gatherResults(puts)

    def partitions(self):
        return [("meta-test", 0), ("test", 0), ("test", 1)]

    def caughtUp(self):
        return all(
            self.master.segmentFiles(topic, partition) == self.slave.segmentFiles(topic, partition)
            and self.master.segmentFiles(topic, partition)
            for topic, partition in self.partitions()
        )

    def exists(self, path):
        return deferToThread(self.zk.exists, self.root + path)

    def children(self, path):
        """
        The children of a node, none while it does not exist.
        """

        def get():
            try:
                return self.zk.get_children(self.root + path)
            except NoNodeError:
                return []

        return deferToThread(get)

    def data(self, path):
        """
        The data of a node, C{b""} while it does not exist.
        """

        def get():
            try:
                return self.zk.get(self.root + path)[0] or b""
            except NoNodeError:
                return b""

        return deferToThread(get)



class AsyncReplicationTests(_AsyncCase):
    @defer.inlineCallbacks
    def test_replicatesByteIdentical(self):
        """
        The slave registers as C{slave0} with C{2-s0} topics, pulls every
        partition and ends with segment files byte for byte the master's,
        for data written before and after it started.
        """
        yield self.startMaster()
        yield self.putMany(60, b"before")
        yield self.startSlave()
        yield self.putMany(60, b"after")
        yield waitFor(self.caughtUp)
        # The slave's registration goes its own way, beside the pulling
        # (which needs only the master's): on a loaded machine its nodes
        # can come after the data.
        for path in ["/brokers/ids/2/slave0", "/brokers/topics-sub/test/2-s0",
                     "/brokers/topics-pub/meta-test/2-s0"]:
            yield waitFor(lambda: self.exists(path), what=path)
        # The replicating consumer shows as the Java slave's does: no
        # owners, no offsets.
        [consumer] = yield waitFor(lambda: self.children("/consumers/meta-slave-group_0/ids"))
        self.assertTrue(consumer.startswith("meta-slave-group_0_127.0.0.1-"), consumer)
        # Its topics are those of the master's registration as the slave
        # last read it, updated after the pullers start.
        path = "/consumers/meta-slave-group_0/ids/" + consumer
        yield waitFor(lambda: self.data(path).addCallback(lambda data: data == b"meta-test,test"),
                      what=path + " listing both topics")
        self.assertIsNone((yield self.exists("/consumers/meta-slave-group_0/owners")))
        self.assertIsNone((yield self.exists("/consumers/meta-slave-group_0/offsets")))
        # The master's own registration is untouched.
        data = yield self.data("/brokers/ids/2/master")
        self.assertEqual(data, b"meta://127.0.0.1:%d" % (self.master.port,))

    @defer.inlineCallbacks
    def test_slaveKilledCatchesUp(self):
        """
        A slave killed mid-stream resumes from its own data and catches up.
        """
        yield self.startMaster()
        yield self.startSlave()
        writing = self.putMany(600, b"a")
        yield sleep(0.3)
        yield self.slave.kill()
        yield writing
        yield self.putMany(30, b"b")
        yield self.slave.start()
        yield waitFor(self.caughtUp)

    @defer.inlineCallbacks
    def test_masterRestarts(self):
        """
        The slave follows a master that is killed and comes back (on
        another port): replication pauses and resumes, and a consumer can
        read everything from the slave meanwhile at the master's offsets.
        """
        yield self.startMaster()
        yield self.startSlave()
        yield self.putMany(30, b"a")
        yield waitFor(self.caughtUp)
        yield self.master.kill()
        consumer = yield self.slave.connect()
        self.addCleanup(consumer.transport.loseConnection)
        reply = yield consumer.get("meta-test", "g", 0, 0, 1024 * 1024, 1)
        self.assertEqual(reply.data, self.master.segmentFiles("meta-test", 0)["00000000000000000000.meta"])
        self.master.port = 0
        yield self.master.start()
        self.producer = yield self.master.connect()
        yield self.putMany(30, b"b")
        yield waitFor(self.caughtUp)

    @defer.inlineCallbacks
    def test_newTopicAndPartition(self):
        """
        Topics and partitions the master starts serving later (its topic
        sections reloaded on SIGHUP) are replicated too.
        """
        yield self.startMaster(topics=(("meta-test", 1),))
        yield self.startSlave()
        yield self.put("meta-test", 0, b"one")
        yield waitFor(lambda: self.slave.segmentFiles("meta-test", 0) == self.master.segmentFiles("meta-test", 0))
        with open(self.master.ini, "w") as f:
            f.write(serverIni(2, (("meta-test", 1), ("test", 1)), zookeeperAddress(), self.root))
        self.master.kill("HUP")
        yield waitFor(lambda: self.exists("/brokers/topics-sub/test/2-m"))
        yield self.put("test", 0, b"two")
        with open(self.master.ini, "w") as f:
            f.write(serverIni(2, TOPICS, zookeeperAddress(), self.root))
        self.master.kill("HUP")
        yield waitFor(lambda: self.data("/brokers/topics-sub/test/2-m").addCallback(lambda data: b'"numParts":2' in data))
        yield self.put("test", 1, b"three")
        yield waitFor(self.caughtUp)

    @defer.inlineCallbacks
    def test_autoSyncMasterConfig(self):
        """
        With C{autoSyncMasterConfig} the slave takes the topic sections of
        its master's configuration and replicates a topic it was not
        configured for, keeping its own [system] and [zookeeper] sections.
        """
        yield self.startMaster()
        self.slave = Broker(
            self,
            "slave",
            serverIni(2, (("meta-test", 1),), zookeeperAddress(), self.root),
            "async_slave.properties",
            "slaveId=0\nslaveMaxDelayInMills=100\nautoSyncMasterConfig=true\n",
        )
        yield self.slave.start()
        yield self.putMany(30)
        yield waitFor(self.caughtUp)
        with open(self.slave.ini) as f:
            ini = f.read()
        self.assertIn("[topic=test]\nnumPartitions=2\n", ini)
        self.assertIn("zk.zkRoot=%s\n" % (self.root,), ini)

    @defer.inlineCallbacks
    def test_lagInStats(self):
        """
        C{stats} on the slave says C{slave true} and reports the
        replication lag, which drops to 0 once caught up.
        """
        yield self.startMaster()
        yield self.startSlave()
        yield self.putMany(30)
        yield waitFor(self.caughtUp)
        client = yield self.slave.connect()
        self.addCleanup(client.transport.loseConnection)

        @defer.inlineCallbacks
        def stats():
            reply = yield client.request(b"stats  7\r\n", 7)
            return dict(line.split(" ", 1) for line in reply.body.decode().split("\r\n")[1:-2])

        # The files can match before the slave counts its last appends, so
        # wait for both the lag and the count.
        yield waitFor(lambda: stats().addCallback(
            lambda s: s.get("replication_lag_bytes") == "0" and s.get("cmd_put") == "30"))
        summary = yield stats()
        self.assertEqual(summary["slave"], "true")
        self.assertEqual((summary["replication_lag_bytes"], int(summary["cmd_put"])), ("0", 30))


class AsyncLinkCutTests(_AsyncCase):
    """
    The link between slave and master through a proxy the test cuts: the
    master runs without ZooKeeper and the test registers it there under the
    proxy's address, so the slave pulls through the proxy.
    """

    @defer.inlineCallbacks
    def test_cut(self):
        """
        While the link is cut the master keeps taking writes and the slave
        waits; once it is back the slave catches up byte for byte.
        """
        self.master = Broker(self, "master", serverIni(2, TOPICS))
        yield self.master.start()
        self.producer = yield self.master.connect()
        self.addCleanup(lambda: self.producer.transport.loseConnection())
        proxy = CuttableProxy(self.master.port)
        self.addCleanup(proxy.stop)
        url = b"meta://127.0.0.1:%d" % (proxy.address,)
        ids = self.root + "/brokers/ids/2"
        yield deferToThread(self.zk.create, ids + "/master", url, ephemeral=True, makepath=True)
        for topic, partitions in TOPICS:
            yield deferToThread(
                self.zk.create,
                "%s/brokers/topics-sub/%s/2-m" % (self.root, topic),
                b'{"numParts":%d,"broker":"2-m"}' % (partitions,),
                ephemeral=True,
                makepath=True,
            )
        yield self.startSlave()
        yield self.putMany(60, b"a")
        yield waitFor(self.caughtUp)
        proxy.cutLink()
        yield self.putMany(60, b"b")
        yield sleep(1.0)
        self.assertFalse(self.caughtUp())
        proxy.heal()
        yield waitFor(self.caughtUp)


class AsyncOverTLSTests(_AsyncCase):
    @defer.inlineCallbacks
    def test_slavePullsOverMutualTLS(self):
        """
        A master with a plain and an mtls: listener whose access rules let
        only the certificate C{slave} consume: its async slave, configured
        with C{tls.*} keys, finds the TLS address in C{ids/<id>/tls-master}
        and replicates byte for byte; plain connections cannot read.
        """
        from tests.tlscerts import CertificateAuthority

        ca = CertificateAuthority(os.path.abspath(self.mktemp()))
        brokerCert, brokerKey = ca.issue("broker", ["127.0.0.1"])
        slaveCert, slaveKey = ca.issue("slave")
        ini = serverIni(2, TOPICS, zookeeperAddress(), self.root) + (
            "[access]\npublish.* = 127.0.0.1\nconsume.* = cn=slave\n")
        self.master = Broker(self, "master", ini, arguments=[
            "--listen", "mtls:0:interface=127.0.0.1:privateKey=%s:certKey=%s:caCerts=%s"
            % (brokerKey, brokerCert, ca.caPath)])
        yield self.master.start()
        self.producer = yield self.master.connect()
        self.addCleanup(lambda: self.producer.transport.loseConnection())
        yield self.putMany(30, b"before")
        reply = yield self.producer.get("test", "g", 0, 0, 1024, 99999)
        self.assertEqual(reply.code, 401, "plain connections may not consume")
        tlsUrl = yield waitFor(lambda: self.data("/brokers/ids/2/tls-master"))
        self.assertNotEqual(tlsUrl, b"meta://127.0.0.1:%d" % (self.master.port,))
        self.slave = Broker(
            self, "slave", serverIni(2, TOPICS, zookeeperAddress(), self.root),
            "async_slave.properties",
            "slaveId=0\nslaveMaxDelayInMills=100\ntls.caCerts=%s\ntls.certificate=%s\n"
            "tls.privateKey=%s\n" % (ca.caPath, slaveCert, slaveKey))
        yield self.slave.start()
        yield self.putMany(30, b"after")
        yield waitFor(self.caughtUp)
