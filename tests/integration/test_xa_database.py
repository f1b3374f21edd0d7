"""
Two-phase commit with a real database as the second resource: MariaDB's XA
transactions beside our broker, driven by a small transaction manager, with
one side crashing between prepare and commit; after recovery both sides
agree.  Skipped when no MariaDB answers at 127.0.0.1:3306 (root, no
password, database C{test}).
"""

import os
import uuid

from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from metamorphosis.client.message import Message
from metamorphosis.client.session import MetaClientConfig, MetaMessageSessionFactory
from metamorphosis.client.transaction import Xid
from metamorphosis.protocol.commands import ValueCommand
from metamorphosis.protocol.records import decodeRecords
from metamorphosis.protocol.xa import TMNOFLAGS, TMSUCCESS, XA_OK
from tests.broker.client import connect
from tests.integration.brokerprocess import startBroker

try:
    import pymysql
except ImportError:  # pragma: no cover
    pymysql = None

TOPIC = "payments"
QUALIFIER = "xa-db-test"

SERVER_INI = """\
[system]
brokerId=0
numPartitions=1
dataPath=data
unflushThreshold=0
[zookeeper]
zk.zkEnable=false
[topic=%s]
""" % (TOPIC,)


def database():
    return pymysql.connect(
        host="127.0.0.1", user="root", password="", database="test", autocommit=True,
        connect_timeout=3,
    )


class Database:
    """
    The database resource, blocking calls run in threads.
    """

    def __init__(self, table):
        self.table = table

    def run(self, f, *args):
        def inThread():
            connection = database()
            try:
                return f(connection.cursor(), *args)
            finally:
                connection.close()

        return threads.deferToThread(inThread)

    @staticmethod
    def xa(xid):
        return (xid.globalTransactionId.decode(), xid.branchQualifier.decode(), xid.formatId)

    def prepare(self, xid, row):
        """
        XA START, insert C{row}, XA END, XA PREPARE, then drop the
        connection (a prepared branch survives it).
        """
        def work(cursor):
            cursor.execute("XA START %s, %s, %s", self.xa(xid))
            cursor.execute("INSERT INTO " + self.table + " VALUES (%s)", (row,))
            cursor.execute("XA END %s, %s, %s", self.xa(xid))
            cursor.execute("XA PREPARE %s, %s, %s", self.xa(xid))

        return self.run(work)

    def recover(self):
        def work(cursor):
            cursor.execute("XA RECOVER")
            return [
                Xid(formatId, data[:gtridLength], data[gtridLength : gtridLength + bqualLength])
                for formatId, gtridLength, bqualLength, data in cursor.fetchall()
            ]

        return self.run(work)

    def complete(self, xid, commit):
        def work(cursor):
            cursor.execute(
                ("XA COMMIT" if commit else "XA ROLLBACK") + " %s, %s, %s", self.xa(xid)
            )

        return self.run(work)

    def rows(self):
        def work(cursor):
            cursor.execute("SELECT id FROM " + self.table)
            return {row for (row,) in cursor.fetchall()}

        return self.run(work)


class XADatabaseTests(unittest.TestCase):
    timeout = 90

    def setUp(self):
        if pymysql is None:
            raise unittest.SkipTest("pymysql is not installed")
        try:
            connection = database()
        except Exception as e:
            raise unittest.SkipTest("no MariaDB at 127.0.0.1:3306: %s" % (e,))
        self.table = "metaq_xa_%s" % (uuid.uuid4().hex[:12],)
        with connection.cursor() as cursor:
            cursor.execute(
                "CREATE TABLE " + self.table + " (id VARCHAR(64) PRIMARY KEY) ENGINE=InnoDB"
            )
        connection.close()
        self.addCleanup(self.dropTable)
        self.db = Database(self.table)
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.config = os.path.join(self.workdir, "server.ini")
        with open(self.config, "w") as f:
            f.write(SERVER_INI)
        self.broker = None
        self.factories = []
        self.addCleanup(self.stop)

    def dropTable(self):
        def work():
            connection = database()
            with connection.cursor() as cursor:
                cursor.execute("XA RECOVER")
                for formatId, g, b, data in cursor.fetchall():
                    if data.startswith(self.table.encode()):
                        cursor.execute(
                            "XA ROLLBACK %s, %s, %s", (data[:g], data[g : g + b], formatId)
                        )
                cursor.execute("DROP TABLE IF EXISTS " + self.table)
            connection.close()

        return threads.deferToThread(work)

    async def stop(self):
        for factory in self.factories:
            await factory.close()
        if self.broker is not None:
            await self.broker.kill()

    async def startBroker(self):
        self.broker = startBroker(reactor, self.config, self.workdir)
        self.port = await self.broker.listening

    async def crashBroker(self):
        await self.broker.kill()
        await self.startBroker()

    async def resource(self):
        """
        A fresh client (as after a restart of the application) and its XA
        resource on our broker.
        """
        config = MetaClientConfig(
            serverUrl="meta://127.0.0.1:%d" % (self.port,),
            partitions={TOPIC: 1},
            localMessagePath=self.mktemp(),
            asyncStoragePath=self.mktemp(),
        )
        factory = MetaMessageSessionFactory(config, reactor)
        self.factories.append(factory)
        await factory.start()
        producer = factory.createXAProducer(uniqueQualifier=QUALIFIER)
        await producer.publish(TOPIC)
        return producer, producer.getXAResource()

    async def messages(self):
        client = await connect(reactor, self.port)
        reply = await client.request(b"get %s check 0 0 1048576 1\r\n" % (TOPIC.encode(),), 1)
        client.transport.loseConnection()
        if not isinstance(reply, ValueCommand):
            return set()
        return {r.data.decode() for r in decodeRecords(reply.data)[0]}

    async def prepareBoth(self, name):
        """
        Phase one of a global transaction writing C{name} to both sides.
        """
        xid = Xid(1, ("%s-%s" % (self.table, name)).encode(), b"b1")
        producer, resource = await self.resource()
        await resource.start(xid, TMNOFLAGS)
        await producer.sendMessage(Message(TOPIC, name.encode()))
        await resource.end(xid, TMSUCCESS)
        await self.db.prepare(xid, name)
        self.assertEqual(await resource.prepare(xid), XA_OK)
        return xid, resource

    async def recoverBoth(self, decisions):
        """
        The transaction manager's recovery: every in-doubt branch on either
        side is completed as its logged decision says (rolled back without
        one, presumed abort).
        """
        _, resource = await self.resource()
        brokerXids = await resource.recover()
        databaseXids = [x for x in await self.db.recover() if x in decisions]
        for xid in brokerXids:
            if decisions.get(xid):
                await resource.commit(xid, False)
            else:
                await resource.rollback(xid)
        for xid in databaseXids:
            await self.db.complete(xid, bool(decisions.get(xid)))
        return brokerXids, databaseXids

    async def assertAgree(self, name, committed):
        rows = await self.db.rows()
        messages = await self.messages()
        self.assertEqual((name in rows, name in messages), (committed, committed))

    def test_brokerCrashesAfterPrepare(self):
        """
        Both sides prepared, commit decided, the broker dies before either
        commit: after its restart RECOVER still lists the branch and both
        sides commit.
        """
        async def go():
            await self.startBroker()
            xid, _ = await self.prepareBoth("paid-1")
            await self.crashBroker()
            brokerXids, databaseXids = await self.recoverBoth({xid: True})
            self.assertEqual((brokerXids, databaseXids), ([xid], [xid]))
            await self.assertAgree("paid-1", True)

        return defer.ensureDeferred(go())

    def test_crashBetweenCommits(self):
        """
        The database committed, the broker died before its commit: recovery
        commits the broker's branch too.
        """
        async def go():
            await self.startBroker()
            xid, _ = await self.prepareBoth("paid-2")
            await self.db.complete(xid, True)
            await self.crashBroker()
            brokerXids, databaseXids = await self.recoverBoth({xid: True})
            self.assertEqual((brokerXids, databaseXids), ([xid], []))
            await self.assertAgree("paid-2", True)

        return defer.ensureDeferred(go())

    def test_applicationCrashesWithoutDecision(self):
        """
        The application (transaction manager and database session) dies
        after both prepares and the broker dies too, before any decision was
        logged: recovery rolls both back.
        """
        async def go():
            await self.startBroker()
            xid, _ = await self.prepareBoth("paid-3")
            await self.crashBroker()
            brokerXids, databaseXids = await self.recoverBoth({xid: False})
            self.assertEqual((brokerXids, databaseXids), ([xid], [xid]))
            await self.assertAgree("paid-3", False)

        return defer.ensureDeferred(go())
