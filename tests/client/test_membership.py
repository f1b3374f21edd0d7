"""
Group membership and rebalancing against a real ZooKeeper: the znodes a
Java consumer writes, partitions split with no overlap and no gap, and
the split following members, partitions and brokers as they change.
"""

import json

from kazoo.client import KazooClient
from twisted.internet import defer, task, threads
from twisted.trial.unittest import TestCase

from metamorphosis.client.consumer import ConsumerConfig
from metamorphosis.client.membership import GroupMembership
from metamorphosis.client.offsets import PartitionOffset, ZooKeeperOffsetStorage
from metamorphosis.client.strategies import DefaultStrategy, javaSorted, strategyNamed
from metamorphosis.zk import kazooLogger
from tests.zookeeper import uniqueRoot, zookeeperAddress


def sleep(seconds):
    from twisted.internet import reactor
    return task.deferLater(reactor, seconds, lambda: None)


class Member:
    """
    The consumer side of a L{GroupMembership}: records what it is told to
    fetch.
    """

    def __init__(self, client, root, topics, group="grp", strategy="DEFAULT", consumerId=None):
        self.config = ConsumerConfig(group, consumerId=consumerId, zkSyncTimeMs=200,
                                     loadBalanceStrategyType=strategy)
        self.group = group
        self._topics = topics
        self.strategy = strategyNamed(strategy)
        self.offsetStorage = ZooKeeperOffsetStorage(client, root)
        self.fetching = []
        self.commits = 0
        self.membership = GroupMembership(self, client, root)

    def topics(self):
        return list(self._topics)

    @defer.inlineCallbacks
    def loadOffset(self, topic, partition):
        info = yield self.offsetStorage.load(topic, self.group, partition)
        return info or PartitionOffset(topic, partition, 0)

    def stopFetching(self):
        self.fetching = []
        return defer.succeed(None)

    def commitOffsets(self):
        self.commits += 1
        return self.offsetStorage.commitOffset(self.group, self.membership.ownedOffsets())

    def startFetching(self, requests):
        self.fetching = sorted((info.topic, str(info.partition), url) for url, info in requests)

    def owned(self, topic="t"):
        return [p for t, p, _ in self.fetching if t == topic]


class MembershipTestsMixin:
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.root = uniqueRoot()
        self.clients = []
        self.zk = yield self.newClient()

    @defer.inlineCallbacks
    def newClient(self):
        client = KazooClient(hosts=zookeeperAddress(), logger=kazooLogger())
        yield threads.deferToThread(client.start)
        self.clients.append(client)
        self.addCleanup(threads.deferToThread, client.close)
        self.addCleanup(threads.deferToThread, client.stop)
        return client

    def broker(self, brokerId, topic, numParts, url=None, slave=None):
        node = "%d-m" % brokerId if slave is None else "%d-s%d" % (brokerId, slave)
        data = json.dumps({"numParts": numParts, "broker": node}).encode()
        url = (url or "meta://127.0.0.1:%d" % (8123 + brokerId)).encode()

        def create():
            ids = "%s/brokers/ids/%d/%s" % (self.root, brokerId,
                                            "master" if slave is None else "slave%d" % slave)
            if not self.zk.exists(ids):
                self.zk.create(ids, url, makepath=True)
            # A broker re-registers a changed topic by deleting its node and
            # creating it again (docs/zookeeper.md).
            path = "%s/brokers/topics-sub/%s/%s" % (self.root, topic, node)
            if self.zk.exists(path):
                self.zk.delete(path)
            self.zk.create(path, data, makepath=True)
        return threads.deferToThread(create)

    @defer.inlineCallbacks
    def member(self, topics=("t",), **kw):
        client = yield self.newClient()
        member = Member(client, self.root, topics, **kw)
        yield member.membership.register()
        self.addCleanup(self.leave, member)
        return member

    def leave(self, member):
        if not member.membership._stopped:
            return member.membership.unregister()

    @defer.inlineCallbacks
    def settle(self, members, expected, topic="t"):
        """
        Wait until the members' shares cover the topic exactly once.
        """
        for _ in range(300):
            owned = [p for m in members for p in m.owned(topic)]
            if sorted(owned) == sorted(expected) and len(set(owned)) == len(owned):
                return
            yield sleep(0.1)
        self.fail("no stable split: %r" % ([m.owned(topic) for m in members],))

    @defer.inlineCallbacks
    def waitFor(self, condition, seconds=30):
        for _ in range(seconds * 10):
            if condition():
                return
            yield sleep(0.1)
        self.fail("timed out waiting for the condition")

    def owners(self, topic="t"):
        def read():
            path = "%s/consumers/grp/owners/%s" % (self.root, topic)
            return {c: self.zk.get(path + "/" + c)[0].decode() for c in self.zk.get_children(path)}
        return threads.deferToThread(read)


class MembershipTests(MembershipTestsMixin, TestCase):
    @defer.inlineCallbacks
    def test_javaZnodes(self):
        """
        The ids node is C{<group>_<ip>-<pid>-<uuid>} holding the topics;
        owner nodes are ephemeral and hold the consumer id.
        """
        yield self.broker(0, "t", 2)
        yield self.broker(0, "u", 1)
        member = yield self.member(topics=("t", "u"))
        consumerId = member.membership.consumerId
        self.assertRegex(consumerId, r"^grp_[0-9.]+-\d+-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-"
                                     r"[0-9a-f]{4}-[0-9a-f]{12}$")
        data, stat = yield threads.deferToThread(
            self.zk.get, "%s/consumers/grp/ids/%s" % (self.root, consumerId))
        self.assertEqual(sorted(data.decode().split(",")), ["t", "u"])
        self.assertNotEqual(stat.ephemeralOwner, 0)
        self.assertEqual((yield self.owners("t")), {"0-0": consumerId, "0-1": consumerId})
        self.assertEqual(member.fetching, [("t", "0-0", "meta://127.0.0.1:8123"),
                                           ("t", "0-1", "meta://127.0.0.1:8123"),
                                           ("u", "0-0", "meta://127.0.0.1:8123")])
        yield member.membership.unregister()
        self.assertEqual((yield self.owners("t")), {})
        children = yield threads.deferToThread(
            self.zk.get_children, "%s/consumers/grp/ids" % (self.root,))
        self.assertEqual(children, [])

    @defer.inlineCallbacks
    def test_threeMembers(self):
        """
        Three members split eleven partitions of two brokers as Java's
        DEFAULT strategy computes it; when one leaves, the other two take
        over its partitions; no partition is owned twice at any check.
        """
        yield self.broker(0, "t", 6)
        yield self.broker(1, "t", 5)
        partitions = ["0-%d" % i for i in range(6)] + ["1-%d" % i for i in range(5)]
        members = []
        for n in range(3):
            members.append((yield self.member(consumerId="c%d" % n)))
        yield self.settle(members, expected=partitions)
        ids = javaSorted([m.membership.consumerId for m in members])
        for m in members:
            self.assertEqual(m.owned(), DefaultStrategy().getPartitions(
                "t", m.membership.consumerId, ids, javaSorted(partitions)))
        owners = yield self.owners()
        self.assertEqual(sorted(owners), sorted(partitions))

        yield members[1].membership.unregister()
        yield self.settle([members[0], members[2]], expected=partitions)
        self.assertEqual(members[0].owned(), javaSorted(partitions)[:6])

    @defer.inlineCallbacks
    def test_consistentHash(self):
        yield self.broker(0, "t", 8)
        partitions = ["0-%d" % i for i in range(8)]
        members = []
        for consumerId in ("a", "b"):
            members.append((yield self.member(strategy="CONSIST", consumerId=consumerId)))
        yield self.settle(members, expected=partitions)

    @defer.inlineCallbacks
    def test_partitionsAndBrokersChange(self):
        """
        A broker adding partitions and a new broker are picked up; a
        master replaced by its slave moves the fetches to the slave; a
        broker leaving takes its partitions away.
        """
        yield self.broker(0, "t", 1)
        member = yield self.member()
        self.assertEqual(member.owned(), ["0-0"])
        yield self.broker(0, "t", 2)
        yield self.settle([member], expected=["0-0", "0-1"])
        yield self.broker(1, "t", 1, slave=None)
        yield self.settle([member], expected=["0-0", "0-1", "1-0"])
        yield self.broker(0, "t", 2, url="meta://127.0.0.1:9999", slave=1)
        # The master's session ends: both its ephemeral nodes go.  As in
        # Java, a consumer watches the children of brokers/ids and of
        # topics-sub/<topic>, not ids/<id>/master itself: the topics-sub
        # change, coming last, is what makes it read the new cluster.
        yield threads.deferToThread(self.zk.delete, "%s/brokers/ids/0/master" % (self.root,))
        yield threads.deferToThread(self.zk.delete, "%s/brokers/topics-sub/t/0-m" % (self.root,))
        moved = [("t", "0-0", "meta://127.0.0.1:9999"), ("t", "0-1", "meta://127.0.0.1:9999"),
                 ("t", "1-0", "meta://127.0.0.1:8124")]
        yield self.waitFor(lambda: member.fetching == moved)
        self.assertEqual(member.fetching, moved)
        # Broker 1 goes away: its partitions are released.
        yield threads.deferToThread(self.zk.delete, "%s/brokers/topics-sub/t/1-m" % (self.root,))
        yield threads.deferToThread(self.zk.delete, "%s/brokers/ids/1" % (self.root,),
                                    recursive=True)
        yield self.settle([member], expected=["0-0", "0-1"])
        self.assertEqual(sorted((yield self.owners())), ["0-0", "0-1"])

    @defer.inlineCallbacks
    def test_badTopicNode(self):
        """
        A topics-sub entry that is not a broker's JSON is skipped; the
        others are consumed.
        """
        yield self.broker(0, "t", 2)
        yield threads.deferToThread(self.zk.create, "%s/brokers/topics-sub/t/1-m" % (self.root,),
                                    b"{broken", makepath=True)
        member = yield self.member()
        self.assertEqual(member.owned(), ["0-0", "0-1"])

    @defer.inlineCallbacks
    def test_ownerConflictRetries(self):
        """
        A partition still owned by someone else makes the attempt fail;
        the member retries until the owner lets go.
        """
        yield self.broker(0, "t", 1)
        path = "%s/consumers/grp/owners/t/0-0" % (self.root,)
        other = yield self.newClient()
        yield threads.deferToThread(other.create, path, b"grp_ghost", ephemeral=True,
                                    makepath=True)
        member = Member((yield self.newClient()), self.root, ("t",))
        registering = member.membership.register()
        self.addCleanup(self.leave, member)
        yield sleep(0.5)
        self.assertEqual(member.owned(), [])
        yield threads.deferToThread(other.delete, path)
        yield registering
        yield self.settle([member], expected=["0-0"])
        self.assertEqual((yield self.owners()), {"0-0": member.membership.consumerId})

    @defer.inlineCallbacks
    def test_sessionExpiry(self):
        """
        After its ZooKeeper session expires a member registers again and
        owns its partitions again.
        """
        yield self.broker(0, "t", 2)
        member = yield self.member()
        client = member.offsetStorage.client
        sessionId, password = client.client_id
        # Closing a second connection on the same session expires it.
        thief = KazooClient(hosts=zookeeperAddress(), client_id=(sessionId, password),
                            logger=kazooLogger())
        yield threads.deferToThread(thief.start)
        yield threads.deferToThread(thief.stop)
        yield threads.deferToThread(thief.close)
        for _ in range(300):
            owners = yield self.owners()
            if (client.client_id and client.client_id[0] != sessionId
                    and owners == {"0-0": member.membership.consumerId,
                                   "0-1": member.membership.consumerId}):
                break
            yield sleep(0.1)
        else:
            self.fail("not re-registered: %r" % (owners,))
        children = yield threads.deferToThread(
            self.zk.get_children, "%s/consumers/grp/ids" % (self.root,))
        self.assertEqual(children, [member.membership.consumerId])


class JavaMemberTests(MembershipTestsMixin, TestCase):
    """
    A group shared with a Java consumer, whose znodes are written here
    exactly as the Java client writes them (zk-03a-during-live-consumer).
    """

    javaId = "grp-b_127.0.0.1-10108-9b0f8f2b-3557-4c80-a3e1-63ba812139c4"

    def javaMember(self, owned):
        def register():
            group = "%s/consumers/grp-b" % (self.root,)
            self.zk.create("%s/ids/%s" % (group, self.javaId), b"t", ephemeral=True,
                           makepath=True)
            for partition in owned:
                self.zk.create("%s/owners/t/%s" % (group, partition),
                               self.javaId.encode(), ephemeral=True, makepath=True)
        return threads.deferToThread(register)

    @defer.inlineCallbacks
    def test_consistentHashWithJava(self):
        """
        With the shares Java's C{ConsisHashStrategy} computed for these two
        ids, the Python consumer takes exactly the partitions the Java one
        leaves: no overlap, no gap.
        """
        yield self.broker(0, "t", 6)
        yield self.broker(1, "t", 6)
        yield self.javaMember(["0-0", "0-1", "0-2", "1-3", "1-4", "1-5"])
        member = yield self.member(group="grp-b", strategy="CONSIST",
                                   consumerId="10.0.0.9-4242-3f2c0c55-1b7e-4c1a-9d36-0a8e5f1b2c3d")
        self.assertEqual(member.owned(), ["0-3", "0-4", "0-5", "1-0", "1-1", "1-2"])
        owners = yield threads.deferToThread(
            lambda: sorted(self.zk.get_children("%s/consumers/grp-b/owners/t" % (self.root,))))
        self.assertEqual(owners, ["0-%d" % i for i in range(6)] + ["1-%d" % i for i in range(6)])

    @defer.inlineCallbacks
    def test_defaultWithJava(self):
        """
        DEFAULT: the ids sort as Java strings (C{grp-b_1...} before
        C{grp-b_z...}), the Java member has the first range.
        """
        yield self.broker(0, "t", 5)
        yield self.javaMember(["0-0", "0-1", "0-2"])
        member = yield self.member(group="grp-b", consumerId="zz-python")
        self.assertEqual(member.owned(), ["0-3", "0-4"])
