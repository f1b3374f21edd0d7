"""
Transactions survive C{kill -9} of the broker: a real broker process is
killed at random moments while local and XA transactions run, restarted on
the same data, and the promises are checked (docs/transactions.md).
"""

import os
import random
from collections import Counter

from twisted.internet import defer, error, reactor, task
from twisted.trial import unittest

from metamorphosis.broker.transactions.journal import REDO_PREFIX, CommitRecord, DoneRecord
from metamorphosis.broker.transactions.journal import decodeRecords as decodeJournal
from metamorphosis.protocol.commands import ValueCommand
from metamorphosis.protocol.records import checksum, decodeRecords
from tests.broker.client import connect
from tests.integration.brokerprocess import startBroker

TOPIC = "txcrash"
QUALIFIER = "crashq"
PARTITIONS = 2

SERVER_INI = """\
[system]
brokerId=0
numPartitions=%d
dataPath=data
unflushThreshold=0
flushTxLogAtCommit=1
[zookeeper]
zk.zkEnable=false
[topic=%s]
""" % (PARTITIONS, TOPIC)


class Transaction:
    """
    What the client knows about one transaction: its messages and the last
    request it sent and whether that was answered.
    """

    def __init__(self, key, xa):
        self.key = key
        self.xa = xa
        self.payloads = []
        self.state = "open"  # open, prepare?, prepared, commit?, committed, rollback?, rolledback


class Workload:
    def __init__(self, round, rng):
        self.round = round
        self.rng = rng
        self.opaque = 0
        self.transactions = []

    def nextOpaque(self):
        self.opaque += 1
        return self.opaque

    async def request(self, client, line, body=None):
        opaque = self.nextOpaque()
        data = line % (opaque,)
        if body is not None:
            data += body
        reply = await client.request(data, opaque)
        return reply

    async def run(self, port, worker):
        client = await connect(reactor, port)
        n = 0
        while True:
            n += 1
            xa = self.rng.random() < 0.5
            if xa:
                key = "XID:1:%s:%s:%s" % (
                    ("r%dw%dn%d" % (self.round, worker, n)).encode().hex(), "01", QUALIFIER)
                qualifier = b" " + QUALIFIER.encode()
            else:
                key = "TX:r%dw%d:%d" % (self.round, worker, n)
                qualifier = b""
            tx = Transaction(key, xa)
            self.transactions.append(tx)
            command = b"transaction " + key.encode() + b" s %s" + qualifier + b" %%d\r\n"
            reply = await self.request(client, command % (b"BEGIN",))
            assert reply.code == 200, reply
            for j in range(self.rng.randint(1, 4)):
                payload = ("%s|%d" % (key, j)).encode()
                tx.payloads.append(payload)
                put = b"put %s %d %d 0 %d %s %%d\r\n" % (
                    TOPIC.encode(), self.rng.randrange(PARTITIONS), len(payload),
                    checksum(payload), key.encode())
                reply = await self.request(client, put, payload)
                assert reply.code == 200 and reply.body.endswith(b" -1"), reply
            choice = self.rng.random()
            if xa:
                tx.state = "prepare?"
                reply = await self.request(client, command % (b"PREPARE",))
                assert reply.body == b"0", reply
                tx.state = "prepared"
                if choice < 0.25:
                    continue
                kind = b"COMMIT_TWO_PHASE" if choice < 0.75 else b"ROLLBACK"
            else:
                if choice < 0.1:
                    continue
                kind = b"COMMIT_ONE_PHASE" if choice < 0.8 else b"ROLLBACK"
            outcome = "committed" if kind.startswith(b"COMMIT") else "rolledback"
            tx.state = "commit?" if outcome == "committed" else "rollback?"
            reply = await self.request(client, command % (kind,))
            assert reply.code == 200, reply
            tx.state = outcome


class NumberedRequests:
    """
    The requests of one raw connection, each ending in the next opaque.
    """

    def __init__(self, client):
        self.client = client
        self._opaque = 0

    def line(self, text, body=b""):
        """
        C{(opaque, bytes)} of the request C{text} with C{body}, to send.
        """
        self._opaque += 1
        return self._opaque, text + b" %d\r\n" % (self._opaque,) + body

    def send(self, text, body=b""):
        """
        Send the request; a Deferred of its reply.
        """
        number, data = self.line(text, body)
        return self.client.request(data, number)


def connectionGone(failure):
    """
    A worker ends when the broker is killed under it; anything else it
    met is a failure.
    """
    failure.trap(error.ConnectionLost, error.ConnectionDone, error.ConnectionRefusedError)


class CrashTests(unittest.TestCase):
    timeout = 120

    def setUp(self):
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.config = os.path.join(self.workdir, "server.ini")
        with open(self.config, "w") as f:
            f.write(SERVER_INI)
        self.broker = None
        self.addCleanup(self.stopBroker)

    async def startBroker(self):
        self.broker = startBroker(reactor, self.config, self.workdir)
        self.port = await self.broker.listening

    def stopBroker(self):
        if self.broker is not None:
            return self.broker.kill()

    async def visible(self):
        """
        Every payload in the topic's partitions, counted.
        """
        client = await connect(reactor, self.port)
        seen = Counter()
        opaque = 1000000
        for partition in range(PARTITIONS):
            offset = 0
            while True:
                opaque += 1
                reply = await client.request(
                    b"get %s check %d %d 1048576 %d\r\n"
                    % (TOPIC.encode(), partition, offset, opaque), opaque)
                if not isinstance(reply, ValueCommand):
                    self.assertEqual(reply.code, 404, reply)
                    break
                records, consumed = decodeRecords(reply.data)
                seen.update(r.data for r in records)
                offset += consumed
        client.transport.loseConnection()
        return seen

    async def recover(self):
        client = await connect(reactor, self.port)
        reply = await client.request(
            b"transaction null s RECOVER %s 7\r\n" % (QUALIFIER.encode(),), 7)
        self.assertEqual(reply.code, 200)
        client.transport.loseConnection()
        return set(reply.body.decode().split("\r\n")) - {""}

    async def complete(self, tx, kind):
        client = await connect(reactor, self.port)
        reply = await client.request(
            b"transaction %s s %s %s 9\r\n" % (tx.key.encode(), kind, QUALIFIER.encode()), 9)
        self.assertEqual(reply.code, 200, reply)
        client.transport.loseConnection()

    async def check(self, transactions):
        """
        After a restart: committed transactions complete and once, nothing
        of rolled back or unprepared ones, prepared ones still prepared.
        """
        seen = await self.visible()
        prepared = await self.recover()
        duplicates = [p for p, n in seen.items() if n > 1]
        self.assertEqual(duplicates, [])
        keys = set()
        for tx in transactions:
            keys.add(tx.key)
            present = sum(seen[p] for p in tx.payloads)
            where = (tx.key, tx.state, present, len(tx.payloads))
            if tx.state == "committed":
                self.assertEqual(present, len(tx.payloads), where)
            elif tx.state in ("commit?",):
                self.assertIn(present, (0, len(tx.payloads)), where)
                if tx.xa and present == 0:
                    self.assertIn(tx.key, prepared, where)
                elif tx.xa:
                    self.assertNotIn(tx.key, prepared, where)
                if not tx.xa or present:
                    tx.state = "committed" if present else "rolledback"
            else:
                self.assertEqual(present, 0, where)
                if tx.state == "prepared":
                    self.assertIn(tx.key, prepared, where)
                elif tx.state in ("open", "rolledback"):
                    self.assertNotIn(tx.key, prepared, where)
        self.assertTrue(prepared <= keys, prepared - keys)
        # The transaction manager finishes what is in doubt.
        for tx in transactions:
            if tx.key in prepared:
                if tx.state != "rollback?" and random.random() < 0.5:
                    await self.complete(tx, b"COMMIT_TWO_PHASE")
                    tx.state = "committed"
                else:
                    await self.complete(tx, b"ROLLBACK")
                    tx.state = "rolledback"
            elif tx.state in ("prepare?", "rollback?", "open"):
                tx.state = "rolledback"
        return sum(1 for tx in transactions if tx.state == "committed")

    def journaled(self, recordType):
        """
        The keys of the records of C{recordType} in the journal.
        """
        journal = os.path.join(self.workdir, "data", "transactions")
        keys = set()
        for name in sorted(os.listdir(journal)):
            if name.startswith(REDO_PREFIX):
                with open(os.path.join(journal, name), "rb") as f:
                    records, _ = decodeJournal(f.read())
                keys.update(r.key.encode() for _, r in records if isinstance(r, recordType))
        return keys

    def test_everyStateSurvivesKill(self):
        """
        One transaction in each state: a consumer sees only the committed
        one, before and after C{kill -9}; after the restart the prepared one
        is still prepared (and can be committed), the others are gone.
        """
        async def go():
            await self.startBroker()
            client = await connect(reactor, self.port)
            send = NumberedRequests(client).send

            def xid(name):
                return ("XID:1:%s:01:%s" % (name.encode().hex(), QUALIFIER)).encode()

            keys = {
                "start": xid("start"), "inuse": xid("inuse"), "prepared": xid("prepared"),
                "committed": xid("committed"), "rolledback": xid("rolledback"),
                "local": b"TX:states:1",
            }
            for name, key in keys.items():
                qualifier = b"" if key.startswith(b"TX:") else b" " + QUALIFIER.encode()
                await send(b"transaction %s s BEGIN%s" % (key, qualifier))
                if name != "start":
                    payload = name.encode()
                    put = b"put %s 0 %d 0 %d %s" % (
                        TOPIC.encode(), len(payload), checksum(payload), key)
                    reply = await send(put, payload)
                    self.assertEqual(reply.code, 200)
            async def xa(name, kind):
                return await send(
                    b"transaction %s s %s %s" % (keys[name], kind, QUALIFIER.encode()))

            self.assertEqual((await xa("prepared", b"PREPARE")).body, b"0")
            self.assertEqual((await xa("committed", b"COMMIT_ONE_PHASE")).code, 200)
            self.assertEqual((await xa("rolledback", b"ROLLBACK")).code, 200)
            self.assertEqual(await self.visible(), Counter([b"committed"]))
            await self.broker.kill()
            await self.startBroker()
            self.assertEqual(await self.visible(), Counter([b"committed"]))
            self.assertEqual(await self.recover(), {keys["prepared"].decode()})
            prepared = Transaction(keys["prepared"].decode(), True)
            await self.complete(prepared, b"COMMIT_TWO_PHASE")
            self.assertEqual(await self.visible(), Counter([b"committed", b"prepared"]))

        return defer.ensureDeferred(go())

    def test_killAtRandomPoints(self):
        async def go():
            rng = random.Random()
            history = []
            await self.startBroker()
            for round in range(4):
                workload = Workload(round, rng)
                workers = [
                    defer.ensureDeferred(workload.run(self.port, w)) for w in range(4)
                ]
                await task.deferLater(reactor, rng.uniform(0.3, 1.2), lambda: None)
                await self.broker.kill()
                await defer.gatherResults(
                    [w.addErrback(connectionGone) for w in workers], consumeErrors=True
                )
                history += workload.transactions
                await self.startBroker()
                committed = await self.check(history)
                # Checked twice: a second restart changes nothing.
                await self.broker.kill()
                await self.startBroker()
                await self.check(history)
            self.assertGreater(committed, 0)

        return defer.ensureDeferred(go())

    def test_commitsAcknowledgedTogetherSurviveKill(self):
        """
        Commits sent together on one connection are acknowledged together
        by the journal's fsync loop; right after the last acknowledgement
        the broker is killed: the journal holds every acknowledged commit,
        and after the restart every message is there once (also those of
        commits PREPAREd first, XA).
        """
        async def go():
            await self.startBroker()
            client = await connect(reactor, self.port)
            requests = NumberedRequests(client)
            line, send = requests.line, requests.send

            def xid(n):
                return ("XID:1:%s:01:%s" % (("group%d" % n).encode().hex(), QUALIFIER)).encode()

            local = [b"TX:group:%d" % (n,) for n in range(1, 17)]
            xa = [xid(n) for n in range(1, 9)]
            for index, key in enumerate(local + xa):
                qualifier = b"" if key in local else b" " + QUALIFIER.encode()
                self.assertEqual((await send(b"transaction %s s BEGIN%s" % (key, qualifier))).code,
                                 200)
                payload = key
                put = b"put %s %d %d 0 %d %s" % (
                    TOPIC.encode(), index % PARTITIONS, len(payload), checksum(payload), key)
                self.assertEqual((await send(put, payload)).code, 200)

            async def together(requests):
                waiting = []
                data = b""
                for text in requests:
                    number, request = line(text)
                    waiting.append(client.expect(number))
                    data += request
                client.transport.write(data)
                return await defer.gatherResults(waiting)

            replies = await together(
                [b"transaction %s s PREPARE %s" % (key, QUALIFIER.encode()) for key in xa])
            self.assertEqual([reply.body for reply in replies], [b"0"] * len(xa))
            replies = await together(
                [b"transaction %s s COMMIT_ONE_PHASE" % (key,) for key in local]
                + [b"transaction %s s COMMIT_TWO_PHASE %s" % (key, QUALIFIER.encode())
                   for key in xa])
            self.assertEqual([reply.code for reply in replies], [200] * len(replies))
            await self.broker.kill()

            self.assertEqual(self.journaled(CommitRecord), set(local + xa))

            await self.startBroker()
            self.assertEqual(await self.visible(), Counter(local + xa))
            self.assertEqual(await self.recover(), set())

        return defer.ensureDeferred(go())

    def test_commitsAnsweredBeforePartitionFsyncSurviveKill(self):
        """
        A commit is answered once the journal's COMMIT is forced and its
        messages are written to the partition, before the partition's
        fsync.  Killed in that window (here a flush is due only after ten
        minutes, and no consumer's get brought one), the journal has the
        COMMITs without DONE, and after the restart every message is there
        once.
        """
        async def go():
            with open(self.config, "w") as f:
                f.write(SERVER_INI.replace(
                    "flushTxLogAtCommit=1\n", "flushTxLogAtCommit=1\ntxFlushInterval=600000\n"))
            await self.startBroker()
            client = await connect(reactor, self.port)
            send = NumberedRequests(client).send

            keys = [b"TX:window:%d" % (n,) for n in range(1, 9)]
            for index, key in enumerate(keys):
                self.assertEqual((await send(b"transaction %s s BEGIN" % (key,))).code, 200)
                put = b"put %s %d %d 0 %d %s" % (
                    TOPIC.encode(), index % PARTITIONS, len(key), checksum(key), key)
                self.assertEqual((await send(put, key)).code, 200)
                reply = await send(b"transaction %s s COMMIT_ONE_PHASE" % (key,))
                self.assertEqual(reply.code, 200)
            await self.broker.kill()

            self.assertEqual(self.journaled(CommitRecord), set(keys))
            self.assertEqual(self.journaled(DoneRecord), set())
            await self.startBroker()
            self.assertEqual(await self.visible(), Counter(keys))
            self.assertEqual(self.journaled(DoneRecord), set(keys))

        return defer.ensureDeferred(go())
