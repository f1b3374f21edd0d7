"""
TLS listeners with real handshakes: a broker listening on a plain, an
C{ssl:} and an C{mtls:} endpoint at once, certificates made in the test,
the Python client over TLS, and access rules by certificate name.
"""

import itertools
from io import StringIO

from kazoo.client import KazooClient
from OpenSSL.SSL import Error as TLSError
from twisted.internet import reactor
from twisted.internet.endpoints import connectProtocol
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.trial import unittest

from metamorphosis.broker.access import UNAUTHORIZED
from metamorphosis.broker.config import parseConfig
from metamorphosis.broker.listeners import ListenerError, buildListeners
from metamorphosis.broker.service import BrokerService, zookeeperService
from metamorphosis.client.connection import MetaClientProtocol, brokerEndpoint
from metamorphosis.client.consumer import ConsumerConfig
from metamorphosis.client.errors import MetaConnectionError
from metamorphosis.client.message import Message
from metamorphosis.client.session import MetaClientConfig, MetaMessageSessionFactory
from metamorphosis.protocol.commands import ValueCommand
from metamorphosis.protocol.records import checksum, decodeRecords
from metamorphosis.tls import ClientTLS
from metamorphosis.tools import main as metaq
from metamorphosis.tools import stats
from metamorphosis.tools.cli import ToolError
from tests.tlscerts import CertificateAuthority
from tests.waiting import waitFor
from tests.zookeeper import uniqueRoot, zookeeperAddress

opaques = itertools.count(1)

#: What a refused handshake looks like to the client, depending on which
#: side notices first.
HANDSHAKE_FAILURES = (TLSError, ConnectionDone, ConnectionLost, MetaConnectionError)


class TLSListenerTests(unittest.TestCase):
    timeout = 60

    def setUp(self):
        directory = self.mktemp()
        self.ca = CertificateAuthority(directory)
        self.brokerCert, self.brokerKey = self.ca.issue("broker", ["127.0.0.1", "localhost"])
        self.producerCert, self.producerKey = self.ca.issue("producer")
        self.otherCert, self.otherKey = self.ca.issue("other")
        self.stranger = CertificateAuthority(directory + "-stranger", "stranger CA")
        self.forgedCert, self.forgedKey = self.stranger.issue("producer")

    def config(self, access=b""):
        text = (b"[system]\nhostName=127.0.0.1\nunflushThreshold=0\n[topic=t]\n[listeners]\n"
                b"plain = tcp:0:interface=127.0.0.1\n"
                b"tls = ssl:0:interface=127.0.0.1:privateKey=%s:certKey=%s\n"
                b"mtls = mtls:0:interface=127.0.0.1:privateKey=%s:certKey=%s:caCerts=%s\n"
                % (self.brokerKey.encode(), self.brokerCert.encode(),
                   self.brokerKey.encode(), self.brokerCert.encode(), self.ca.caPath.encode()))
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(text + access)
        config = parseConfig(text + access, path)
        config.dataPath = config.topics["t"].dataPath = self.mktemp()
        return config

    async def startBroker(self, access=b""):
        config = self.config(access)
        broker = BrokerService(config, buildListeners(reactor, config.listeners), reactor)
        broker.startService()
        self.addCleanup(broker.stopService)
        await broker.started
        self.broker = broker
        return {name: port.getHost().port for name, port in broker.ports.items()}

    async def connect(self, port, tls=None):
        endpoint = brokerEndpoint(reactor, "127.0.0.1", port, 10, tls)
        client = await connectProtocol(endpoint, MetaClientProtocol(reactor))
        self.addCleanup(client.transport.loseConnection)
        return client

    async def putAndGet(self, client, payload):
        reply = await client.put("t", 0, payload, 0, checksum(payload))
        self.assertEqual(reply.code, 200, reply.body)
        offset = int(reply.body.split()[2])
        reply = await client.get("t", "g", 0, offset, 1024)
        self.assertIsInstance(reply, ValueCommand)
        return [r.data for r in decodeRecords(reply.data)[0]]

    async def test_plainAndTLSAtOnce(self):
        """
        One broker serves the plain listener (unchanged, for Java clients)
        and the TLS listener; the TLS client verifies the broker against the
        CA and the host name 127.0.0.1.
        """
        ports = await self.startBroker()
        plain = await self.connect(ports["plain"])
        self.assertEqual(await self.putAndGet(plain, b"over tcp"), [b"over tcp"])
        secure = await self.connect(ports["tls"], ClientTLS(caCerts=self.ca.caPath))
        self.assertEqual(await self.putAndGet(secure, b"over tls"), [b"over tls"])
        self.assertEqual(self.broker.stats.port, ports["plain"])
        self.assertEqual(len(self.broker.factory.connections), 2)
        (session,) = [p.session for p in self.broker.factory.connections
                      if p.transport.getHost().port == ports["tls"]]
        self.assertIsNone(session.principal.certName, "ssl: asks for no client certificate")

    async def test_clientRefusesAnUntrustedBroker(self):
        ports = await self.startBroker()
        with self.assertRaises(HANDSHAKE_FAILURES):
            client = await self.connect(ports["tls"], ClientTLS(caCerts=self.stranger.caPath))
            await client.version()
        with self.assertRaises(HANDSHAKE_FAILURES):
            client = await self.connect(
                ports["tls"], ClientTLS(caCerts=self.ca.caPath, hostname="elsewhere.example"))
            await client.version()

    async def test_sessionFactoryOverTLS(self):
        """
        The Python client's producer, in direct mode, sends over TLS.
        """
        ports = await self.startBroker()
        config = MetaClientConfig(
            serverUrl=f"meta://127.0.0.1:{ports['mtls']}", partitions={"t": 1},
            tls=ClientTLS(caCerts=self.ca.caPath, certificate=self.producerCert,
                          privateKey=self.producerKey),
            localMessagePath=self.mktemp(), asyncStoragePath=self.mktemp())
        factory = MetaMessageSessionFactory(config, reactor)
        self.addCleanup(factory.close)
        await factory.start()
        producer = factory.createProducer()
        await producer.publish("t")
        result = await producer.sendMessage(Message("t", b"from the python client"))
        self.assertTrue(result.success, result.errorMessage)
        store = self.broker.storeManager.getStore("t", 0)
        self.assertIn(b"from the python client", store.slice(0, 4096).read())
        (session,) = [p.session for p in self.broker.factory.connections]
        self.assertEqual(session.principal.certName, "producer")

    async def test_mutualTLSNeedsATrustedCertificate(self):
        """
        The mtls: listener refuses clients without a certificate and with
        one from another CA.
        """
        ports = await self.startBroker()
        for tls in (ClientTLS(caCerts=self.ca.caPath),
                    ClientTLS(caCerts=self.ca.caPath, certificate=self.forgedCert,
                              privateKey=self.forgedKey)):
            with self.assertRaises(HANDSHAKE_FAILURES):
                client = await self.connect(ports["mtls"], tls)
                await client.version()
        client = await self.connect(ports["mtls"], ClientTLS(
            caCerts=self.ca.caPath, certificate=self.producerCert, privateKey=self.producerKey))
        self.assertEqual((await client.version()).code, 200)

    async def test_accessByCertificateName(self):
        """
        Grants by certificate name: the producer certificate may publish,
        another certificate of the same CA may not, and the plain listener
        (no certificate) may not either.
        """
        ports = await self.startBroker(b"[access]\npublish.t = cn=producer\nconsume.t = cn=*\n")
        producer = await self.connect(ports["mtls"], ClientTLS(
            caCerts=self.ca.caPath, certificate=self.producerCert, privateKey=self.producerKey))
        other = await self.connect(ports["mtls"], ClientTLS(
            caCerts=self.ca.caPath, certificate=self.otherCert, privateKey=self.otherKey))
        plain = await self.connect(ports["plain"])
        self.assertEqual(await self.putAndGet(producer, b"signed"), [b"signed"])
        for client, who in ((other, "cn=other@127.0.0.1"), (plain, "127.0.0.1")):
            reply = await client.put("t", 0, b"x", 0, checksum(b"x"))
            self.assertEqual((reply.code, reply.body.decode()),
                             (UNAUTHORIZED, f"Access denied: {who} may not publish t"))
        reply = await other.get("t", "g", 0, 0, 1024)
        self.assertIsInstance(reply, ValueCommand, "consume.t = cn=* lets any certificate read")
        reply = await plain.get("t", "g", 0, 0, 1024)
        self.assertEqual(reply.code, UNAUTHORIZED)

    async def test_statsToolAsOperator(self):
        """
        C{metaq --tls-ca … --tls-cert ops.crt stats config} reads the
        configuration through the mtls: listener where C{admin = cn=ops};
        the same command with another certificate is refused.
        """
        opsCert, opsKey = self.ca.issue("ops")
        ports = await self.startBroker(b"[access]\nadmin = cn=ops\n")

        def options(cert, key):
            command = metaq.Options()
            command.parseOptions(["--tls-ca", self.ca.caPath, "--tls-cert", cert,
                                  "--tls-key", key, "stats", "-b",
                                  f"127.0.0.1:{ports['mtls']}", "config"])
            return command

        out = StringIO()
        self.assertEqual(await stats.main(reactor, options(opsCert, opsKey).subOptions, out), 0)
        self.assertIn("[access]", out.getvalue())
        with self.assertRaises(ToolError) as caught:
            await stats.main(reactor, options(self.otherCert, self.otherKey).subOptions,
                             StringIO())
        self.assertIn("answered 401: Access denied: cn=other@127.0.0.1 may not admin stats config",
                      str(caught.exception))

    def test_badListener(self):
        for description in ("mtls:0:privateKey=%s" % (self.brokerKey,),
                            "ssl:0:privateKey=/nonexistent.pem", "bogus:1"):
            self.assertRaises(ListenerError, buildListeners, reactor, [("x", description)])


class TLSRegistrationTests(unittest.TestCase):
    """
    A broker with a plain and a TLS listener registers both in ZooKeeper:
    the plain address where Java clients read it, the TLS one beside it;
    a Python client configured for TLS finds and uses the TLS one.
    """

    timeout = 60

    async def test_registrationAndDiscovery(self):
        address, root = zookeeperAddress(), uniqueRoot()
        directory = self.mktemp()
        ca = CertificateAuthority(directory)
        cert, key = ca.issue("broker", ["127.0.0.1"])
        text = (f"[system]\nbrokerId=3\nhostName=127.0.0.1\nunflushThreshold=0\n"
                f"[zookeeper]\nzk.zkConnect={address}\nzk.zkRoot={root}\n"
                f"zk.zkSyncTimeMs=0\n[topic=t]\n[listeners]\n"
                f"plain = tcp:0:interface=127.0.0.1\n"
                f"tls = ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}\n")
        config = parseConfig(text.encode(), "server.ini")
        config.dataPath = config.topics["t"].dataPath = self.mktemp()
        broker = BrokerService(config, buildListeners(reactor, config.listeners), reactor,
                               zookeeper=zookeeperService(config))
        broker.startService()
        self.addCleanup(broker.stopService)
        await broker.started
        ports = {name: port.getHost().port for name, port in broker.ports.items()}

        observer = KazooClient(hosts=address)
        observer.start()
        self.addCleanup(observer.stop)
        self.addCleanup(observer.delete, root, recursive=True)
        ids = f"{root}/brokers/ids/3"

        def registered():
            return (observer.exists(f"{ids}/tls-master") is not None
                    and observer.exists(f"{root}/brokers/topics-pub/t/3-m") is not None)

        await waitFor(registered, what="TLS registration")
        self.assertEqual(observer.get(f"{ids}/master")[0].decode(),
                         f"meta://127.0.0.1:{ports['plain']}")
        self.assertEqual(observer.get(ids)[0].decode(), f"meta://127.0.0.1:{ports['plain']}")
        data, stat = observer.get(f"{ids}/tls-master")
        self.assertEqual(data.decode(), f"meta://127.0.0.1:{ports['tls']}")
        self.assertTrue(stat.ephemeralOwner)

        config = MetaClientConfig(zkConnect=address, zkRoot=root, tls=ClientTLS(caCerts=ca.caPath),
                                  localMessagePath=self.mktemp(), asyncStoragePath=self.mktemp())
        factory = MetaMessageSessionFactory(config, reactor)
        self.addCleanup(factory.close)
        await factory.start()
        producer = factory.createProducer()
        await producer.publish("t")
        result = await producer.sendMessage(Message("t", b"found through zookeeper"))
        self.assertTrue(result.success, result.errorMessage)
        (connection,) = broker.factory.connections
        self.assertEqual(connection.transport.getHost().port, ports["tls"])
        # A consumer of the same factory finds the broker's TLS address in
        # its rebalance (tls-master) and reads over TLS.
        received = []
        consumer = factory.createConsumer(ConsumerConfig(
            "g", maxDelayFetchTimeInMills=200, recoverPath=self.mktemp()))
        consumer.subscribe("t", 1024 * 1024, lambda message: received.append(message.data))
        await consumer.completeSubscribe()
        await waitFor(lambda: received, what="the message read over TLS")
        self.assertEqual(received, [b"found through zookeeper"])
        self.assertEqual({p.transport.getHost().port for p in broker.factory.connections},
                         {ports["tls"]})
        await factory.close()
        await broker.stopService()
        self.assertIsNone(observer.exists(f"{ids}/tls-master"))
