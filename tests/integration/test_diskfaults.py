"""
Damaged and full disks under a real broker process (docs/disk-faults.md):
the broker refuses what it cannot keep and never hands out an
acknowledged offset again.
"""

import os

from twisted.internet import defer, reactor
from twisted.trial import unittest

from metamorphosis.protocol.commands import ValueCommand
from metamorphosis.protocol.records import checksum, decodeRecords
from tests.broker.client import connect
from tests.integration.brokerprocess import startBroker

TOPIC = "disk"
QUALIFIER = "diskq"

SERVER_INI = """\
[system]
brokerId=0
numPartitions=2
dataPath=data
unflushThreshold=0
flushTxLogAtCommit=1
[zookeeper]
zk.zkEnable=false
[topic=%s]
""" % (TOPIC,)


class BrokerTestCase(unittest.TestCase):
    """
    A broker process on a work directory that outlives its restarts.
    """

    timeout = 120
    serverIni = SERVER_INI

    def setUp(self):
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.config = os.path.join(self.workdir, "server.ini")
        with open(self.config, "w") as f:
            f.write(self.serverIni)
        self.broker = None
        self.client = None
        self.opaque = 0
        self.addCleanup(self.stopBroker)

    def partitionDirectory(self, partition=0):
        return os.path.join(self.workdir, "data", "%s-%d" % (TOPIC, partition))

    async def startBroker(self, faults=False):
        self.broker = startBroker(reactor, self.config, self.workdir, faults=faults)
        self.port = await self.broker.listening
        self.client = await connect(reactor, self.port)

    async def restart(self, faults=False):
        await self.stopBroker()
        await self.startBroker(faults)

    def stopBroker(self):
        if self.client is not None:
            self.client.transport.loseConnection()
            self.client = None
        if self.broker is not None:
            broker, self.broker = self.broker, None
            return broker.kill()
        return defer.succeed(None)

    def fault(self, name, on=True):
        path = os.path.join(self.workdir, "fault-" + name)
        if on:
            open(path, "w").close()
        else:
            os.remove(path)

    async def send(self, line, body=b""):
        self.opaque += 1
        return await self.client.request(line + b" %d\r\n" % (self.opaque,) + body, self.opaque)

    async def put(self, payload, partition=0, key=None):
        line = b"put %s %d %d 0 %d" % (TOPIC.encode(), partition, len(payload), checksum(payload))
        if key is not None:
            line += b" " + key
        return await self.send(line, payload)

    async def putOffset(self, payload, partition=0):
        reply = await self.put(payload, partition)
        self.assertEqual(reply.code, 200, reply)
        return int(reply.body.split()[2])

    async def get(self, offset, partition=0, maxSize=1 << 20):
        return await self.send(b"get %s g %d %d %d" % (TOPIC.encode(), partition, offset, maxSize))

    async def readAll(self, partition=0, offset=0):
        """
        Every record a consumer gets from C{offset} on, following 301s,
        as C{[(offset, payload)]}.
        """
        found = []
        for _ in range(10000):
            reply = await self.get(offset, partition)
            if isinstance(reply, ValueCommand):
                records, consumed = decodeRecords(reply.data)
                position = offset
                for record in records:
                    found.append((position, record.data))
                    position += record.size
                self.assertTrue(consumed, "a get at %d returned no whole record" % (offset,))
                offset += consumed
            elif reply.code == 301 and int(reply.body) > offset:
                offset = int(reply.body)
            else:
                self.assertIn(reply.code, (301, 404), reply)
                return found
        self.fail("the consumer did not reach the end")


class PrepareOnFullDiskTests(BrokerTestCase):
    """
    A PREPARE whose journal write fails leaves the transaction unprepared.
    """

    def xa(self, name):
        return ("XID:1:%s:01:%s" % (name.encode().hex(), QUALIFIER)).encode()

    async def command(self, key, kind):
        return await self.send(b"transaction %s s %s %s" % (key, kind, QUALIFIER.encode()))

    async def recover(self):
        reply = await self.send(b"transaction null s RECOVER %s" % (QUALIFIER.encode(),))
        self.assertEqual(reply.code, 200, reply)
        return set(reply.body.decode().split("\r\n")) - {""}

    async def begin(self, key, payload):
        self.assertEqual((await self.command(key, b"BEGIN")).code, 200)
        self.assertEqual((await self.put(payload, key=key)).code, 200)

    def test_failedPrepare(self):
        async def go():
            await self.startBroker(faults=True)
            retried, lost = self.xa("retried"), self.xa("lost")
            await self.begin(retried, b"retried")
            await self.begin(lost, b"lost")
            self.fault("journal-enospc")
            for key in (retried, lost):
                reply = await self.command(key, b"PREPARE")
                self.assertEqual(reply.code, 500)
                self.assertTrue(reply.body.startswith(b"XAException:code=-3,"), reply.body)
                self.assertIn(b"No space left on device", reply.body)
            self.assertEqual(await self.recover(), set())
            reply = await self.command(retried, b"COMMIT_TWO_PHASE")
            self.assertEqual(reply.code, 500, reply)
            self.fault("journal-enospc", on=False)
            self.assertEqual((await self.command(retried, b"PREPARE")).body, b"0")
            self.assertEqual(await self.recover(), {retried.decode()})
            await self.restart(faults=True)
            self.assertEqual(await self.recover(), {retried.decode()})
            self.assertEqual(await self.readAll(), [])
            self.assertEqual((await self.command(retried, b"COMMIT_TWO_PHASE")).code, 200)
            self.assertEqual([p for _, p in await self.readAll()], [b"retried"])

        return defer.ensureDeferred(go())
