"""
Tests for L{metamorphosis.broker.access}: the C{[access]} rules, parsed and
enforced by a real broker on loopback sockets. The two clients of a test
differ by their source address (127.0.0.1 and 127.0.0.2, both loopback).
"""

import ipaddress
import itertools
import os
import shutil
import tempfile

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import endpoints, reactor
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from metamorphosis.broker.access import (
    UNAUTHORIZED,
    AccessConfigError,
    AccessGate,
    AccessRules,
    Grantee,
    Principal,
    parseAccess,
)
from metamorphosis.broker.config import (
    ConfigError,
    parseConfig,
    reloadTopics,
)
from metamorphosis.broker.listeners import buildListeners
from metamorphosis.broker.redaction import MASK, redactSecrets
from metamorphosis.broker.service import BrokerService
from metamorphosis.protocol.commands import (
    GetCommand,
    OffsetCommand,
    PutCommand,
    StatsCommand,
    TransactionCommand,
)
from metamorphosis.protocol.records import checksum
from tests.broker.client import RawClient

TRUSTED, STRANGER = "127.0.0.1", "127.0.0.2"
XID = "XID:1:72756e31:6231:access-test"
XID2 = "XID:1:72756e32:6231:access-test"
opaques = itertools.count(1)


def principal(address, certName=None):
    return Principal(ipaddress.ip_address(address), certName)


class RuleTests(unittest.TestCase):
    """
    Parsing and matching of the grants.
    """

    def test_noSectionAllowsEverything(self):
        rules = AccessRules()
        anyone = principal("192.0.2.1")
        self.assertTrue(rules.mayPublish(anyone, "t"))
        self.assertTrue(rules.mayConsume(anyone, "t"))
        self.assertTrue(rules.mayAdmin(anyone))
        self.assertTrue(rules.mayTouchAnyTransaction(anyone))
        self.assertTrue(rules.mayReplicate(anyone))

    def test_sectionDeniesWhatItDoesNotGrant(self):
        rules = parseAccess([("publish.orders-*", "10.1.0.0/16, cn=order-*")])
        self.assertTrue(rules.mayPublish(principal("10.1.2.3"), "orders-eu"))
        self.assertTrue(rules.mayPublish(principal("192.0.2.1", "order-svc"), "orders-eu"))
        self.assertFalse(rules.mayPublish(principal("10.2.0.1"), "orders-eu"))
        self.assertFalse(rules.mayPublish(principal("10.1.2.3"), "payments"))
        self.assertFalse(rules.mayConsume(principal("10.1.2.3"), "orders-eu"))
        self.assertFalse(rules.mayAdmin(principal("10.1.2.3")))
        self.assertFalse(rules.mayReplicate(principal("10.1.2.3")))

    def test_certificateAndNetwork(self):
        """
        C{cn=NAME@NETWORK} needs both; a certificate name never matches a
        connection without a certificate.
        """
        (grantee,) = parseAccess([("admin", "cn=ops@10.0.0.0/8")]).grants["admin"]
        self.assertTrue(grantee.matches(principal("10.9.9.9", "ops")))
        self.assertFalse(grantee.matches(principal("192.0.2.1", "ops")))
        self.assertFalse(grantee.matches(principal("10.9.9.9")))
        self.assertFalse(grantee.matches(principal("10.9.9.9", "ops2")))

    def test_transactionsRight(self):
        rules = parseAccess([("transactions", "10.0.0.1"), ("admin", "10.0.0.2")])
        self.assertTrue(rules.mayTouchAnyTransaction(principal("10.0.0.1")))
        self.assertFalse(rules.mayAdmin(principal("10.0.0.1")))
        self.assertTrue(rules.mayTouchAnyTransaction(principal("10.0.0.2")))
        self.assertFalse(rules.mayTouchAnyTransaction(principal("10.0.0.3")))

    def test_unixAndIPv6(self):
        rules = parseAccess([("admin", "unix, ::1")])
        self.assertTrue(rules.mayAdmin(Principal()))
        self.assertTrue(rules.mayAdmin(principal("::1")))
        self.assertFalse(rules.mayAdmin(principal("127.0.0.1")))

    def test_badEntries(self):
        for entries in ([("publish.t", "nonsense")], [("publish.", "*")],
                        [("publish.t", " , ")], [("admins", "*")], [("admin", "cn=")]):
            self.assertRaises(AccessConfigError, parseAccess, entries)

    def test_configErrorNamesTheSection(self):
        e = self.assertRaises(ConfigError, parseConfig, b"[access]\nadmin = 300.1.1.1\n", "x.ini")
        self.assertIn("[access]", str(e))
        self.assertIn("300.1.1.1", str(e))

    @given(st.ip_addresses(), st.integers(0, 128))
    def test_networkEntry(self, address, prefix):
        """
        An address matches the network entry of any prefix containing it.
        """
        prefix = min(prefix, address.max_prefixlen)
        network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
        grantee = Grantee.parse(str(network))
        self.assertTrue(grantee.matches(Principal(address)))
        self.assertEqual(grantee.matches(Principal(network.broadcast_address)), True)

    @given(st.lists(st.tuples(st.text(max_size=20), st.text(max_size=40)), max_size=5))
    def test_anyTextParsesOrIsRefused(self, entries):
        """
        Whatever an [access] section holds, parsing gives rules or an
        L{AccessConfigError}, nothing else.
        """
        try:
            rules = parseAccess(entries)
        except AccessConfigError:
            return
        self.assertTrue(rules.enabled)
        rules.mayPublish(principal("10.0.0.1", "x"), "t")

    def test_reloadReplacesRules(self):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"[access]\nadmin = 10.0.0.1\n")
        with open(path, "rb") as f:
            config = parseConfig(f.read(), path)
        self.assertFalse(config.access.mayAdmin(principal("10.0.0.2")))
        with open(path, "wb") as f:
            f.write(b"[access]\nadmin = 10.0.0.2\n")
        reloadTopics(config)
        self.assertTrue(config.access.mayAdmin(principal("10.0.0.2")))
        with open(path, "wb") as f:
            f.write(b"[system]\n")
        reloadTopics(config)
        self.assertTrue(config.access.mayAdmin(principal("192.0.2.9")), "section removed: open")


class DenialLogTests(unittest.TestCase):
    def test_oneLinePerInterval(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        clock = Clock()
        rules = parseAccess([("admin", "10.0.0.1")])
        gate = AccessGate(lambda: rules, clock=clock, logInterval=60)

        class Session:
            principal = principal("10.0.0.9")

        def denials():
            return [e for e in events if e.get("log_format", "").startswith("Access denied")]

        for _ in range(100):
            reply = gate.check(StatsCommand("reset", 1), Session)
            self.assertEqual(reply.code, UNAUTHORIZED)
        self.assertEqual(len(denials()), 1)
        clock.advance(60)
        gate.check(StatsCommand("reset", 1), Session)
        self.assertEqual(len(denials()), 2)
        self.assertEqual(denials()[-1]["suppressed"], 99)
        self.assertEqual(denials()[-1]["principal"], "10.0.0.9")


class RedactionTests(unittest.TestCase):
    def test_secretsMasked(self):
        text = (b"[system]\r\nserverPort=8123\r\ndb.password = hunter2\r\n"
                b"[listeners]\r\ntls = mtls:8443:privateKey=k.pem:keyPassword=s3\\:cret:certKey=c\r\n"
                b"x.url = postgresql://meta:pw0rd@db/x\r\n")
        redacted = redactSecrets(text)
        for secret in (b"hunter2", b"s3\\:cret", b"cret", b"pw0rd"):
            self.assertNotIn(secret, redacted)
        self.assertIn(b"serverPort=8123\r\n", redacted)
        self.assertIn(b"privateKey=k.pem:keyPassword=" + MASK.encode() + b":certKey=c", redacted)
        self.assertEqual(redacted.count(b"\r\n"), text.count(b"\r\n"))

    @given(st.binary(max_size=300))
    def test_anyBytes(self, data):
        """
        Redaction never fails and keeps the line structure.
        """
        redacted = redactSecrets(data)
        self.assertEqual(redacted.count(b"\n"), data.count(b"\n"))

    @given(st.sampled_from(["password", "keyPassword", "db.passwd", "apiToken", "secret"]),
           st.text(st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters=":\\"),
                   min_size=4, max_size=20))
    def test_anySecretValue(self, key, value):
        line = f"{key} = {value}\n".encode()
        self.assertEqual(redactSecrets(line), f"{key} = {MASK}\n".encode())
        argument = f"ssl:1:{key}={value}:x=y".encode()
        self.assertNotIn(b"=" + value.encode() + b":", redactSecrets(argument))


class EnforcementTests(unittest.TestCase):
    """
    A broker with an C{[access]} section, clients from a trusted and a
    stranger's address.
    """

    timeout = 60

    ACCESS = b"""
[system]
brokerId = 0
hostName = 127.0.0.1
unflushThreshold = 0
[topic=orders]
numPartitions = 1
[topic=audit]
numPartitions = 1
[topic=xa]
[access]
publish.orders = 127.0.0.1
publish.audit = *
publish.xa = *
consume.orders = 127.0.0.1
admin = 127.0.0.1
"""

    def startBroker(self, text=ACCESS):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(text)
        config = parseConfig(text, path)
        config.dataPath = self.mktemp()
        for topic in config.topics.values():
            topic.dataPath = config.dataPath
        endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        broker = BrokerService(config, endpoint, reactor)
        broker.startService()
        self.addCleanup(broker.stopService)
        return broker.started.addCallback(lambda port: (broker, port.getHost().port))

    async def client(self, port, source):
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port,
                                                bindAddress=(source, 0))
        client = await endpoints.connectProtocol(endpoint, RawClient())
        self.addCleanup(lambda: client.transport.loseConnection() or client.closed)
        return client

    def send(self, client, command):
        return client.request(command.encode(), command.opaque)

    def put(self, client, topic, data=b"m", transactionKey=None):
        return self.send(client, PutCommand(topic, 0, data, 0, next(opaques),
                                            checksum(data), transactionKey))

    def tx(self, client, kind, key=XID):
        return self.send(client, TransactionCommand(key, "s", kind, next(opaques)))

    async def clients(self, text=ACCESS):
        broker, port = await self.startBroker(text)
        return (broker, await self.client(port, TRUSTED), await self.client(port, STRANGER))

    async def test_publish(self):
        _, trusted, stranger = await self.clients()
        reply = await self.put(trusted, "orders")
        self.assertEqual(reply.code, 200)
        reply = await self.put(stranger, "orders")
        self.assertEqual(reply.code, UNAUTHORIZED)
        self.assertEqual(reply.body.decode(),
                         f"Access denied: {STRANGER} may not publish orders")
        reply = await self.put(stranger, "audit")
        self.assertEqual(reply.code, 200, "publish.audit = * lets anyone in")
        reply = await self.put(stranger, "orders", transactionKey="TX:s-1:1")
        self.assertEqual(reply.code, UNAUTHORIZED, "transactional puts are checked too")
        reply = await self.send(trusted, GetCommand("orders", "g", 0, 0, 1024, next(opaques)))
        self.assertNotIn(b"m", reply.data.replace(b"m", b"", 1), "one put stored, not two")

    async def test_consume(self):
        _, trusted, stranger = await self.clients()
        await self.put(trusted, "orders", b"secret order")
        for command in (GetCommand("orders", "g", 0, 0, 1024, next(opaques)),
                        OffsetCommand("orders", "g", 0, 0, next(opaques))):
            reply = await self.send(stranger, command)
            self.assertEqual((reply.code, reply.body.decode()),
                             (UNAUTHORIZED, f"Access denied: {STRANGER} may not consume orders"))
        reply = await self.send(trusted, GetCommand("orders", "g", 0, 0, 1024, next(opaques)))
        self.assertIn(b"secret order", reply.data)
        reply = await self.send(stranger, GetCommand("audit", "g", 0, 0, 1024, next(opaques)))
        self.assertEqual(reply.code, UNAUTHORIZED, "no consume grant for audit at all")

    async def test_admin(self):
        _, trusted, stranger = await self.clients()
        for item in ("reset", "config"):
            reply = await self.send(stranger, StatsCommand(item, next(opaques)))
            self.assertEqual((reply.code, reply.body.decode()),
                             (UNAUTHORIZED, f"Access denied: {STRANGER} may not admin stats {item}"))
            reply = await self.send(trusted, StatsCommand(item, next(opaques)))
            self.assertEqual(reply.code, 200)
        reply = await self.send(stranger, StatsCommand(None, next(opaques)))
        self.assertEqual(reply.code, 200, "plain stats stay open")

    async def test_statsConfigHasNoSecrets(self):
        text = self.ACCESS + b"[listeners]\nplain = tcp:0:interface=127.0.0.1\n" \
            b"tls = mtls:0:privateKey=k.pem:keyPassword=hunter2:caCerts=ca.pem\n"
        _, trusted, _ = await self.clients(text)
        reply = await self.send(trusted, StatsCommand("config", next(opaques)))
        self.assertEqual(reply.code, 200)
        self.assertNotIn(b"hunter2", reply.body)
        self.assertIn(b"keyPassword=" + MASK.encode(), reply.body)

    async def test_xaBranchesOfOthers(self):
        """
        The issue's scenario: a stranger's ROLLBACK of a branch it did not
        begin is refused, so the owner's COMMIT still works; RECOVER shows a
        stranger nothing; the admin may complete anybody's branch.
        """
        broker, trusted, stranger = await self.clients()
        owner = await self.client(broker.port.getHost().port, STRANGER)
        await self.tx(owner, "BEGIN")
        reply = await self.put(owner, "xa", b"xa-1", XID)
        self.assertEqual(reply.code, 200)
        await self.tx(owner, "PREPARE")
        reply = await self.put(stranger, "xa", b"intruder", XID)
        self.assertEqual(reply.code, UNAUTHORIZED)
        for kind in ("ROLLBACK", "COMMIT_TWO_PHASE", "PREPARE", "BEGIN"):
            reply = await self.tx(stranger, kind)
            self.assertEqual(reply.code, UNAUTHORIZED, kind)
            self.assertTrue(reply.body.startswith(b"XAException:code=-3,msg=Access denied: "))
        reply = await self.tx(stranger, "RECOVER", "null")
        self.assertEqual((reply.code, reply.body), (200, b""))
        reply = await self.tx(owner, "RECOVER", "null")
        self.assertEqual((reply.code, reply.body.decode()), (200, XID))
        reply = await self.tx(trusted, "RECOVER", "null")
        self.assertEqual((reply.code, reply.body.decode()), (200, XID))
        reply = await self.tx(owner, "COMMIT_TWO_PHASE")
        self.assertEqual(reply.code, 200)
        # The admin completes a branch whose owner is still connected.
        await self.tx(owner, "BEGIN", XID2)
        await self.put(owner, "xa", b"xa-2", XID2)
        await self.tx(owner, "PREPARE", XID2)
        reply = await self.tx(trusted, "ROLLBACK", XID2)
        self.assertEqual(reply.code, 200)
        store = broker.storeManager.getStore("xa", 0)
        # The commit's messages are served once the partition is flushed.
        await store.flush()
        stored = store.slice(0, 1 << 20).read()
        self.assertIn(b"xa-1", stored)
        self.assertNotIn(b"intruder", stored)
        self.assertNotIn(b"xa-2", stored)

    async def test_samePrincipalRecoversAfterReconnecting(self):
        """
        A branch whose connection closed may be completed by a new
        connection of the same principal (a client recovering after a
        reconnection), not by another principal.
        """
        broker, _, stranger = await self.clients()
        port = broker.port.getHost().port
        owner = await self.client(port, "127.0.0.3")
        await self.tx(owner, "BEGIN")
        await self.put(owner, "xa", b"xa-1", XID)
        await self.tx(owner, "PREPARE")
        owner.transport.loseConnection()
        await owner.closed
        reply = await self.tx(stranger, "COMMIT_TWO_PHASE")
        self.assertEqual(reply.code, UNAUTHORIZED)
        again = await self.client(port, "127.0.0.3")
        reply = await self.tx(again, "RECOVER", "null")
        self.assertEqual(reply.body.decode(), XID)
        reply = await self.tx(again, "COMMIT_TWO_PHASE")
        self.assertEqual(reply.code, 200)

    async def test_openWithoutSection(self):
        """
        Without C{[access]} a stranger may do everything, as on MetaQ,
        including completing another connection's XA branch.
        """
        text = b"[system]\nhostName=127.0.0.1\nunflushThreshold=0\n[topic=xa]\n"
        _, owner, stranger = await self.clients(text)
        reply = await self.send(stranger, StatsCommand("reset", next(opaques)))
        self.assertEqual(reply.code, 200)
        await self.tx(owner, "BEGIN")
        await self.put(owner, "xa", b"xa-1", XID)
        await self.tx(owner, "PREPARE")
        reply = await self.tx(stranger, "RECOVER", "null")
        self.assertEqual(reply.body.decode(), XID)
        reply = await self.tx(stranger, "ROLLBACK")
        self.assertEqual(reply.code, 200)

    async def test_unixListener(self):
        """
        A connection over a UNIX socket listener is the principal C{unix}:
        the admin grant C{unix} lets it reset the statistics, TCP clients
        not.
        """
        text = self.ACCESS.replace(b"admin = 127.0.0.1", b"admin = unix")
        # Short: a UNIX socket path has at most 107 bytes.
        directory = tempfile.mkdtemp(prefix="metaq-access-")
        self.addCleanup(shutil.rmtree, directory, True)
        socketPath = os.path.join(directory, "broker.sock")
        text += b"[listeners]\nplain = tcp:0:interface=127.0.0.1\nlocal = unix:" + \
            socketPath.encode() + b"\n"
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(text)
        config = parseConfig(text, path)
        config.dataPath = self.mktemp()
        for topic in config.topics.values():
            topic.dataPath = config.dataPath
        broker = BrokerService(config, buildListeners(reactor, config.listeners), reactor)
        broker.startService()
        self.addCleanup(broker.stopService)
        await broker.started
        local = await endpoints.connectProtocol(
            endpoints.UNIXClientEndpoint(reactor, socketPath), RawClient())
        self.addCleanup(lambda: local.transport.loseConnection() or local.closed)
        reply = await self.send(local, StatsCommand("reset", next(opaques)))
        self.assertEqual(reply.code, 200)
        tcp = await self.client(broker.ports["plain"].getHost().port, TRUSTED)
        reply = await self.send(tcp, StatsCommand("reset", next(opaques)))
        self.assertEqual((reply.code, reply.body.decode()),
                         (UNAUTHORIZED, f"Access denied: {TRUSTED} may not admin stats reset"))
