"""
Synchronous replication with real processes: a samsa master and a gregor
slave started by C{twistd metaq}, a producer on a real socket, crashes with
SIGKILL and a link cut through a proxy.
"""

from dataclasses import replace

from kazoo.client import KazooClient
from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from metamorphosis.protocol.commands import SyncCommand
from metamorphosis.protocol.records import checksum, decodeRecords
from tests.ha.processes import Broker, CuttableProxy, serverIni, sleep
from tests.waiting import waitFor
from tests.zookeeper import uniqueRoot, zookeeperAddress


def samsaProperties(slavePort, timeoutMs=2000, threshold=100, intervalMs=100):
    return (
        "slave=127.0.0.1:%d\nsendToSlaveTimeoutInMills=%d\n"
        "slaveContinuousFailureThreshold=%d\ncheckSlaveIntervalInMills=%d\n"
        % (slavePort, timeoutMs, threshold, intervalMs)
    )


def storedRecords(broker, topic="meta-test", partition=0):
    """
    The records of a partition on disk, oldest first.
    """
    data = b"".join(broker.segmentFiles(topic, partition).values())
    records, consumed = decodeRecords(data)
    assert consumed == len(data), "trailing garbage in %s" % (broker.name,)
    return records


class _SyncPair(TestCase):
    """
    A gregor slave and a samsa master, and a producer connected to the
    master.
    """

    timeout = 60

    #: The slave's C{unflushThreshold}: 0, group commit, so that its reply
    #: to a sync means fsynced, as the master's to a put.
    slaveUnflushThreshold = 0

    @defer.inlineCallbacks
    def startPair(self, zkConnect=None, zkRoot="/meta", slaveVia=None, maxSegmentSize=1073741824, **samsa):
        """
        Start a gregor slave, then a samsa master replicating to it (through
        a proxy, if C{slaveVia} is a callable making one from the slave's
        port).
        """
        self.slave = Broker(
            self,
            "slave",
            serverIni(1, maxSegmentSize=maxSegmentSize, unflushThreshold=self.slaveUnflushThreshold),
            "gregor_slave.properties",
            "",
        )
        slavePort = yield self.slave.start()
        if slaveVia is not None:
            self.proxy = slaveVia(slavePort)
            self.addCleanup(self.proxy.stop)
            slavePort = self.proxy.address
        self.master = Broker(
            self,
            "master",
            serverIni(1, zkConnect=zkConnect, zkRoot=zkRoot, maxSegmentSize=maxSegmentSize),
            "samsa_master.properties",
            samsaProperties(slavePort, **samsa),
        )
        yield self.master.start()
        self.producer = yield self.master.connect()
        self.addCleanup(self.producer.transport.loseConnection)
        self.opaque = 0
        self.acknowledged = set()
        # The master connects to its slave after it listens.
        yield waitFor(self.putSucceeds)

    @defer.inlineCallbacks
    def putSucceeds(self):
        reply = yield self.put(b"probe")
        return reply.code == 200

    def put(self, payload, partition=0):
        self.opaque += 1
        return self.producer.put("meta-test", partition, payload, self.opaque)

    def putMany(self, count, prefix=b"m"):
        """
        Pipeline C{count} puts; the replies in order (L{None} for a put
        whose connection was lost).  Acknowledged message ids are collected
        in C{self.acknowledged} as the replies arrive.
        """

        def replied(reply):
            if reply.code == 200:
                self.acknowledged.add(int(reply.body.split()[0]))
            return reply

        return defer.gatherResults(
            [
                self.put(b"%s-%d-%s" % (prefix, i, b"x" * (i % 50))).addCallbacks(replied, lambda f: None)
                for i in range(count)
            ]
        )



class SyncReplicationTests(_SyncPair):
    @defer.inlineCallbacks
    def test_byteIdenticalSegments(self):
        """
        Every put the master acknowledges is on both brokers, and the
        segment files are byte for byte the same, with the master's ids.
        """
        yield self.startPair()
        replies = yield self.putMany(300)
        self.assertEqual({reply.code for reply in replies}, {200})
        masterFiles = self.master.segmentFiles("meta-test", 0)
        self.assertTrue(masterFiles)
        self.assertEqual(masterFiles, self.slave.segmentFiles("meta-test", 0))
        ids = {int(reply.body.split()[0]) for reply in replies}
        self.assertTrue(ids <= {record.id for record in storedRecords(self.slave)})

    @defer.inlineCallbacks
    def test_byteIdenticalSegmentsAcrossRolls(self):
        """
        The slave stores the syncs of one read as one append, yet its
        segments roll where the master's do: the same files.
        """
        yield self.startPair(maxSegmentSize=2048)
        replies = yield self.putMany(300)
        self.assertEqual({reply.code for reply in replies}, {200})
        masterFiles = self.master.segmentFiles("meta-test", 0)
        self.assertGreater(len(masterFiles), 5)
        self.assertEqual(masterFiles, self.slave.segmentFiles("meta-test", 0))

    @defer.inlineCallbacks
    def test_slaveKilled(self):
        """
        With the slave killed mid-stream the producer gets errors, and once
        it is back every acknowledged message is on both sides.
        """
        yield self.startPair()
        first = self.putMany(300, b"a")
        yield waitFor(lambda: len(self.acknowledged) > 20)
        yield self.slave.kill()
        yield first
        during = yield self.putMany(20, b"b")
        self.assertEqual({reply.code for reply in during}, {500})
        # Refused at once once the master saw the connection drop; before
        # that, the sync fails.
        for reply in during:
            self.assertTrue(reply.body == b"Slave is disconnected " or b"[slave 'meta://" in reply.body, reply.body)
        yield self.slave.start()
        yield waitFor(self.putSucceeds)
        after = yield self.putMany(50, b"c")
        self.assertEqual({reply.code for reply in after}, {200})
        for broker in (self.master, self.slave):
            stored = {record.id for record in storedRecords(broker)}
            self.assertEqual(self.acknowledged - stored, set(), broker.name)

    @defer.inlineCallbacks
    def test_masterKilled(self):
        """
        Every message acknowledged before the master crashed is on the
        slave.
        """
        yield self.startPair()
        pending = self.putMany(300, b"a")
        yield waitFor(lambda: len(self.acknowledged) > 20)
        yield self.master.kill()
        yield pending
        self.assertTrue(self.acknowledged)
        stored = {record.id for record in storedRecords(self.slave)}
        self.assertEqual(self.acknowledged - stored, set())


class WrittenSlaveReplicationTests(SyncReplicationTests):
    """
    The same with the slave at C{unflushThreshold=1000} (and the master at
    group commit): the slave answers a sync once it has written it, before
    its fsync, and what the master acknowledged still survives either
    broker's crash (docs/ha.md, "The slave's flush policy").
    """

    slaveUnflushThreshold = 1000


class SlaveTests(TestCase):
    """
    A gregor slave alone, sent syncs by the test.
    """

    timeout = 60

    @defer.inlineCallbacks
    def test_syncsOfOneWrite(self):
        """
        Syncs written together (the slave's bulk path) to two partitions,
        one failing its checksum and one to a partition the slave does not
        have among them: each answered as alone, the others stored in
        order with the master's ids, at the offsets their replies give.
        """
        slave = Broker(self, "slave", serverIni(1, topics=(("meta-test", 2),)), "gregor_slave.properties", "")
        yield slave.start()
        client = yield slave.connect()
        self.addCleanup(client.transport.loseConnection)
        bodies = [b"message %d" % (index,) for index in range(20)]
        syncs = [SyncCommand("meta-test", index % 2, body, 0, 1000 + index, index, checksum(body))
                 for index, body in enumerate(bodies)]
        syncs[7] = replace(syncs[7], checksum=5)
        syncs[12] = replace(syncs[12], partition=2)
        waiting = [client.expect(sync.opaque) for sync in syncs]
        client.transport.write(b"".join(sync.encode() for sync in syncs))
        replies = yield defer.gatherResults(waiting)
        prefix = "Put message to [broker 'meta://127.0.0.1:%d'] " % (slave.port,)
        self.assertEqual(replies[7].message, prefix + "[partition 'meta-test-1'] failed.Detail:Checksum failure,"
                         "message may be corrupted when transfering on networking.")
        self.assertEqual(replies[12].message, prefix + "[partition 'meta-test-2'] failed.Detail:wrong partition 2")
        for partition in (0, 1):
            stored = [sync for sync in syncs if sync.partition == partition and sync.opaque != 7]
            records = storedRecords(slave, partition=partition)
            self.assertEqual([(r.id, r.body) for r in records], [(sync.msgId, sync.data) for sync in stored])
            offsets = [sum(20 + len(sync.data) for sync in stored[:index]) for index in range(len(stored))]
            self.assertEqual([replies[sync.opaque].body for sync in stored],
                             [b"%d %d %d" % (sync.msgId, partition, offset) for sync, offset in zip(stored, offsets)])


class SyncLinkCutTests(_SyncPair):
    """
    The link between master and slave through a proxy that the test cuts
    and stalls, with the master registered in ZooKeeper.
    """

    def setUp(self):
        self.root = uniqueRoot("ha-sync")
        self.zk = KazooClient(hosts=zookeeperAddress())
        self.zk.start(10)
        self.addCleanup(self.zk.stop)
        self.addCleanup(self.zk.delete, self.root, recursive=True)

    def registered(self):
        return deferToThread(self.zk.exists, self.root + "/brokers/ids/1/master")

    @defer.inlineCallbacks
    def test_cutAndStall(self):
        """
        A cut link makes puts fail at once; a stalled one makes them time
        out, and after C{slaveContinuousFailureThreshold} timeouts the
        master leaves ZooKeeper until a probe reaches the slave again.
        Nothing acknowledged is missing on either side afterwards.
        """
        yield self.startPair(
            zkConnect=zookeeperAddress(),
            zkRoot=self.root,
            slaveVia=CuttableProxy,
            timeoutMs=300,
            threshold=3,
            intervalMs=50,
        )
        yield waitFor(self.registered)
        yield self.putMany(20, b"a")

        self.proxy.cutLink()
        yield waitFor(lambda: self.put(b"cut").addCallback(lambda r: r.body == b"Slave is disconnected "))
        self.proxy.heal()
        yield waitFor(self.putSucceeds)

        self.proxy.stall()
        stalled = yield self.putMany(3, b"stalled")
        for reply in stalled:
            self.assertEqual(reply.code, 500)
            self.assertIn(b"Put message to [slave 'meta://127.0.0.1:", reply.body)
        yield waitFor(lambda: self.registered().addCallback(lambda stat: stat is None))
        yield sleep(0.3)
        self.assertIsNone((yield self.registered()))

        self.proxy.heal()
        yield waitFor(self.registered)
        yield waitFor(self.putSucceeds)
        yield self.putMany(20, b"b")
        for broker in (self.master, self.slave):
            stored = {record.id for record in storedRecords(broker)}
            self.assertEqual(self.acknowledged - stored, set(), broker.name)


class SyncOverTLSTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_syncLinkOverMutualTLS(self):
        """
        A gregor slave whose only way in for replication is its mtls:
        listener with the certificate C{master} (C{replicate = cn=master});
        the samsa master, with C{tls.*} keys, replicates through it, and
        every acknowledged put is on the slave.
        """
        import os

        from tests.tlscerts import CertificateAuthority

        ca = CertificateAuthority(os.path.abspath(self.mktemp()))
        slaveCert, slaveKey = ca.issue("slave", ["127.0.0.1"])
        masterCert, masterKey = ca.issue("master")
        slave = Broker(
            self, "slave",
            serverIni(1) + "[access]\nreplicate = cn=master\nconsume.* = *\n",
            "gregor_slave.properties", "",
            arguments=["--listen", "mtls:0:interface=127.0.0.1:privateKey=%s:certKey=%s:caCerts=%s"
                       % (slaveKey, slaveCert, ca.caPath)])
        yield slave.start()
        match = yield slave.process.logged(rb"listening on 127\.0\.0\.1:(\d+) \(listen1: TLS\)")
        tlsPort = int(match.group(1))
        master = Broker(
            self, "master", serverIni(1), "samsa_master.properties",
            samsaProperties(tlsPort) + "tls.caCerts=%s\ntls.certificate=%s\ntls.privateKey=%s\n"
            % (ca.caPath, masterCert, masterKey))
        yield master.start()
        producer = yield master.connect()
        self.addCleanup(producer.transport.loseConnection)
        opaques = iter(range(1, 1000))

        @defer.inlineCallbacks
        def put(payload):
            reply = yield producer.put("meta-test", 0, payload, next(opaques))
            return reply.code == 200

        yield waitFor(lambda: put(b"probe"))
        for i in range(20):
            self.assertTrue((yield put(b"tls-%d" % (i,))))
        onSlave = [record.data for record in storedRecords(slave)]
        self.assertEqual(onSlave[-20:], [b"tls-%d" % (i,) for i in range(20)])
        # A plain connection may not send syncs to the slave.
        plain = yield slave.connect()
        self.addCleanup(plain.transport.loseConnection)
        reply = yield plain.request(
            b"sync meta-test 0 1 0 1 -1 77\r\nx", 77)
        self.assertEqual(reply.code, 401)
