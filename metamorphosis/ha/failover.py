"""
Failover, which MetaQ leaves to operators: promoting an async slave to
master when its master is gone, and keeping the old master from taking
writes when it comes back (docs/ha.md, "Failover").

Who the master of a broker id is, is decided in one ZooKeeper node, the
failover record C{<zkRoot>/failover/<brokerId>}: JSON
C{{"epoch": N, "master": "meta://host:port"}}.  It is changed only by a
versioned write (compare-and-set), so of two slaves trying to promote
themselves at once exactly one succeeds, and every promotion raises the
epoch.

* A slave with C{autoPromote=true} creates the record (epoch 0, naming the
  current master) when it first sees its master, and claims it (epoch + 1,
  naming itself) once the master's C{ids/<id>/master} node has been gone
  for C{promoteAfterMs} (plus one second per slave id, so that slave 0
  normally wins).  A sync slave claims it much sooner - without waiting
  for the master's ZooKeeper session to expire - when both its link from
  the master is down and the master's beat (below) has stopped for
  C{masterGraceMs}: a flapping link alone never deposes a live master.  A slave whose URL the record names - put there by it or
  by the admin tool (L{metamorphosis.tools.failover}) - promotes itself:
  it stops replicating and registers as the master.

* Every broker registering as a master runs a L{Fence}: while a record
  exists that names another broker it stays out of ZooKeeper and refuses
  writes; while the record names it, it refuses writes whenever its
  ZooKeeper connection is down (its master node may be expiring, and a
  slave may be about to take over), so two brokers never take writes for
  one broker id at the same time.  Without a record nothing changes.

* Every broker taking part in failover keeps an ephemeral state node,
  C{<zkRoot>/failover-brokers/<brokerId>/<host:port>}, holding JSON
  (C{role}, C{epoch}, C{link}...).  A master rewrites its own at every
  round of its fence (L{Fence.interval}): each write raises the node's
  version, and that beat is how a slave tells, through ZooKeeper and long
  before the session expires, that its master is gone.  The admin tool
  reads these nodes to show the state of a pair.
"""

import json
import os
from dataclasses import dataclass

from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError
from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from metamorphosis import zk
from metamorphosis.broker.server import Replies, putBatchThenOf
from metamorphosis.logfields import errorText
from metamorphosis.protocol.commands import ResultCommand
from metamorphosis.protocol.status import INTERNAL_ERROR

#: The file in the data directory of a broker that took part in failover.
MARKER = "failover.marker"

#: The key of a sync master's state node giving, in ms, the longest its
#: link to its slave stays without a write from it (its C{linkHeartbeatMs});
#: absent for a master that does not heartbeat that often.
LINK_HEARTBEAT_KEY = "link_heartbeat_ms"


def recordPath(paths, brokerId):
    """
    The failover record of C{brokerId} under a L{zk.ZkPaths} root.
    """
    return "%s/failover/%d" % (paths.root, brokerId)


@dataclass(frozen=True)
class FailoverRecord:
    epoch: int
    master: str

    def encode(self):
        return json.dumps({"epoch": self.epoch, "master": self.master}, separators=(",", ":")).encode("utf-8")

    @classmethod
    def decode(cls, data):
        """
        @raise ValueError: not a failover record.
        """
        try:
            value = json.loads(data.decode("utf-8"))
            return cls(int(value["epoch"]), str(value["master"]))
        except (UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ValueError("not a failover record: %r" % (data,)) from e


def statesPath(paths, brokerId):
    """
    The parent of the state nodes of the brokers of C{brokerId}.
    """
    return "%s/failover-brokers/%d" % (paths.root, brokerId)


def stateNodeName(url):
    """
    The name of a broker's state node: its C{host:port}.
    """
    return url[len("meta://"):] if url.startswith("meta://") else url


async def writeState(client, path, state, reactor=None):
    """
    Write a broker's state node (ephemeral, created on first use): every
    write raises its version, which is the beat a slave watches.
    """
    data = json.dumps(state, sort_keys=True, separators=(",", ":")).encode("utf-8")
    try:
        await zk.deferKazoo(client.set_async(path, data), reactor)
    except NoNodeError:
        await zk.ensurePath(client, path.rsplit("/", 1)[0], reactor)
        try:
            await zk.deferKazoo(client.create_async(path, data, ephemeral=True), reactor)
        except NodeExistsError:
            # Created meanwhile (by this broker's previous session, still
            # open): the next beat sets it.
            pass


def announcedHeartbeat(data):
    """
    The seconds between two heartbeats of its link to its slave that a
    master's state node announces (L{LINK_HEARTBEAT_KEY}), or L{None}.
    """
    try:
        milliseconds = json.loads(data.decode("utf-8")).get(LINK_HEARTBEAT_KEY)
    except (UnicodeDecodeError, ValueError, AttributeError):
        return None
    if isinstance(milliseconds, int) and not isinstance(milliseconds, bool) and milliseconds > 0:
        return milliseconds / 1000.0
    return None


async def readRecord(client, path, reactor=None):
    """
    @return: C{(record, version)}, C{(None, None)} when there is none.
    """
    try:
        data, stat = await zk.deferKazoo(client.get_async(path), reactor)
    except NoNodeError:
        return None, None
    return FailoverRecord.decode(data), stat.version


async def writeRecord(client, path, record, version, reactor=None):
    """
    Create the record (C{version} L{None}) or replace the one at C{version}.

    @return: whether this write won (C{False}: someone else changed the
        record first).
    """
    try:
        if version is None:
            await zk.ensurePath(client, path.rsplit("/", 1)[0], reactor)
            await zk.deferKazoo(client.create_async(path, record.encode()), reactor)
        else:
            await zk.deferKazoo(client.set_async(path, record.encode(), version), reactor)
    except (NodeExistsError, BadVersionError, NoNodeError):
        return False
    return True


class Candidate:
    """
    A slave's side of failover: decides, each time the slave looks at its
    master's registration, whether it is to become the master.

    @param autoPromote: claim the record when the master is gone; without
        it the slave promotes only when the record is set to name it.
    @param waitSeconds: how long the master must be gone first.
    @param ownUrl: a callable giving the slave's C{meta://host:port}, or
        L{None} while unknown.
    @param graceSeconds: with a C{link} passed to L{shouldPromote}: how
        long the master's beat must have stopped, while the link is down,
        for the slave to claim the record without waiting for the master's
        node to go (0: never).
    @param statesPath: the parent of the brokers' state nodes
        (L{statesPath}), where the master's beat is read.
    @ivar masterHeartbeat: the seconds between two heartbeats of its link
        the master last announced in its state node (L{LINK_HEARTBEAT_KEY}),
        or L{None}: not announced, or not read yet.
    """

    log = Logger()

    def __init__(self, path, autoPromote, waitSeconds, ownUrl, clock, graceSeconds=0, statesPath=None):
        self.path = path
        self.autoPromote = autoPromote
        self.waitSeconds = waitSeconds
        self.ownUrl = ownUrl
        self.clock = clock
        self.graceSeconds = graceSeconds
        self.statesPath = statesPath
        self._masterGoneSince = None
        self._waitingForAMaster = False
        self._beat = None
        self._beatSeenAt = None
        self._toldNoBeat = False
        self.masterHeartbeat = None

    async def _beatStopped(self, client, record):
        """
        Read the beat of the master C{record} names and say whether it has
        stopped: not changed for C{graceSeconds} of this slave's clock since
        it was last seen changing, or gone after having been seen.  A master
        never seen beating (one that does not write it) has not stopped.
        Only versions are compared, never clocks of two hosts.
        """
        path = "%s/%s" % (self.statesPath, stateNodeName(record.master))
        if self._beat is not None and self._beat[0] != record.master:
            self.masterHeartbeat = None
        try:
            data, stat = await zk.deferKazoo(client.get_async(path), self.clock)
            beat = (record.master, stat.czxid, stat.version)
            self.masterHeartbeat = announcedHeartbeat(data)
        except NoNodeError:
            beat = (record.master, None, None)
        now = self.clock.seconds()
        previous, self._beat = self._beat, beat
        if previous is None or previous[0] != record.master:
            # First look at this master: it must be seen beating first.
            self._beatSeenAt = now if beat[1] is not None else None
            return False
        if beat[1] is None:
            return self._beatSeenAt is not None
        if beat != previous:
            self._beatSeenAt = now
            return False
        return now - self._beatSeenAt >= self.graceSeconds

    async def shouldPromote(self, client, masterUrl, link=None):
        """
        Read the record: it names this slave - promote; with C{autoPromote},
        create it while there is a master, and claim it when the master
        (C{masterUrl} L{None}) has been gone long enough, or - given the
        C{link} from the master (see L{gregor.MasterLink}) - as soon as that
        link is down and the master's beat has stopped for
        C{graceSeconds}.  The claim is made only if C{link.seal()} (which
        refuses the master's syncs from then on) agrees; a lost claim
        C{link.unseal()}s.

        @return: whether this slave is to become the master.
        """
        ownUrl = self.ownUrl()
        if ownUrl is None:
            return False
        try:
            record, version = await readRecord(client, self.path, self.clock)
        except ValueError as e:
            self.log.error("{error}; no failover", error=errorText(e))
            return False
        if record is not None and record.master == ownUrl:
            return True
        if not self.autoPromote:
            return False
        fast = link is not None and self.graceSeconds > 0 and record is not None and self.statesPath is not None
        stopped = fast and await self._beatStopped(client, record)
        if fast and link.down and self._beatSeenAt is None and masterUrl is not None:
            if not self._toldNoBeat:
                self._toldNoBeat = True
                self.log.warn(
                    "Master {master}: link down, and it was never seen beating in ZooKeeper (a Java "
                    "master, or one that just started): waiting for its registration to go",
                    master=record.master,
                )
        else:
            self._toldNoBeat = False
        if masterUrl is not None:
            self._masterGoneSince = None
            if record is None:
                await writeRecord(client, self.path, FailoverRecord(0, masterUrl), None, self.clock)
                return False
            if not (stopped and link.down):
                return False
            self.log.warn(
                "Master {master}: link down and no beat in ZooKeeper for {grace} s",
                master=record.master,
                grace=self.graceSeconds,
            )
            return await self._claim(client, record, version, ownUrl, link, linkDown=True)
        if record is None:
            # The record is made while a master is registered: without one,
            # no master was ever seen here.  A slave started before its
            # master (a sync pair starts that way) waits for it rather than
            # taking a place nobody held.
            if not self._waitingForAMaster:
                self._waitingForAMaster = True
                self.log.info("No master seen yet ({path}); waiting for one", path=self.path)
            return False
        now = self.clock.seconds()
        if self._masterGoneSince is None:
            self._masterGoneSince = now
            self.log.warn("The master is gone ({path})", path=self.path)
        quick = stopped and link.down
        if now - self._masterGoneSince < self.waitSeconds and not quick:
            return False
        return await self._claim(client, record, version, ownUrl, link, linkDown=quick)

    async def _claim(self, client, record, version, ownUrl, link, linkDown=False):
        """
        Claim the record (epoch + 1, naming this slave).  With a C{link},
        its master's syncs are refused from before the claim is written;
        with C{linkDown}, only if the link is still down at that moment.
        """
        if link is not None and not link.seal(linkDown):
            return False
        claim = FailoverRecord(record.epoch + 1, ownUrl)
        try:
            won = await writeRecord(client, self.path, claim, version, self.clock)
        except BaseException:
            if link is not None:
                link.unseal()
            raise
        if won:
            self.log.warn("Claimed {path} at epoch {epoch}", path=self.path, epoch=claim.epoch)
        elif link is not None:
            link.unseal()
        return won


class Fence(service.Service):
    """
    Keeps a master from taking writes when the failover record names
    another broker, or when it cannot know (its ZooKeeper connection is down
    while the record names it).

    A broker that has seen a record naming it leaves a marker file in its
    data directory: started again, it refuses writes until it has read the
    record, so an old master restarted after a failover takes no write at
    all; a broker that never took part in failover starts taking writes at
    once, with or without ZooKeeper.

    While a record exists, each round also rewrites the broker's state
    node (L{writeState}): the beat by which a slave knows, through
    ZooKeeper, that this master is alive.

    @param registration: the broker's
        L{metamorphosis.broker.zookeeper.BrokerZooKeeper}.
    @param dataPath: the broker's data directory (for the marker file).
    @param describe: a callable giving more of the broker's state for its
        state node, as C{(name, value)} pairs (the replication link).
    @ivar refusal: L{None} while writes are allowed, else the reason.
    @ivar epoch: the epoch of the record last read, or L{None}.
    """

    log = Logger()

    #: Seconds between two rounds (a read of the record and a beat).  A
    #: slave's C{masterGraceMs} should cover several rounds.
    interval = 0.3

    def __init__(self, registration, dataPath, reactor=None, describe=None):
        if reactor is None:
            from twisted.internet import reactor
        self.registration = registration
        self.reactor = reactor
        self.describe = describe
        self.path = recordPath(registration.paths, registration.config.brokerId)
        self.states = statesPath(registration.paths, registration.config.brokerId)
        self.marker = os.path.join(dataPath, MARKER)
        self.named = os.path.exists(self.marker)
        self.refusal = "has not read its failover record yet" if self.named else None
        self.fenced = False
        self.epoch = None
        self._loop = None

    def startService(self):
        service.Service.startService(self)
        self._loop = defer.ensureDeferred(self._watch())
        self._loop.addErrback(lambda f: None if f.check(defer.CancelledError) else self.log.failure("Fence stopped", f))

    def stopService(self):
        service.Service.stopService(self)
        if self._loop is not None:
            self._loop.cancel()

    async def _watch(self):
        while self.running:
            try:
                await self.check()
            except defer.CancelledError:
                # stopService cancelled us: no further round, no timer left behind.
                raise
            except Exception as e:
                self.log.info("Reading the failover record failed: {error}", error=errorText(e))
                self._connectionDown()
            await deferLater(self.reactor, self.interval, lambda: None)

    def _connectionDown(self):
        if self.named:
            self.refusal = "lost ZooKeeper; a slave may be taking over"

    async def check(self):
        client = self.registration.client
        url = self.registration.brokerString
        if client is None or not client.connected or url is None:
            self._connectionDown()
            return
        try:
            record, _ = await readRecord(client, self.path, self.reactor)
        except ValueError as e:
            self.log.error("{error}; ignoring it", error=errorText(e))
            record = None
        self.epoch = None if record is None else record.epoch
        if record is not None:
            # First, before anything that may wait for a thread (the
            # marker file, behind the store's fsyncs): a master that beats
            # late may be taken for dead.
            await self.beat(client, url, "master" if record.master == url else "fenced")
        if record is None or record.master == url:
            if self.named != (record is not None):
                self.named = record is not None
                await deferToThread(self._mark, self.named)
            self.refusal = None
            if self.fenced:
                self.fenced = False
                self.log.warn("The failover record names this broker again: registering as master")
                self.registration.registerEverything()
        else:
            self.refusal = "broker %d was failed over to %s (epoch %d)" % (
                self.registration.config.brokerId,
                record.master,
                record.epoch,
            )
            if not self.fenced:
                self.fenced = True
                self.log.error("Fenced: {reason}; not registering and refusing writes", reason=self.refusal)
                await self.registration.unregisterEverything()

    def namesThisBroker(self):
        """
        Read the record now: whether it names this broker (so that it may
        take the place of another session's nodes of its id).

        @return: a Deferred firing with a bool.
        """

        async def read():
            client, url = self.registration.client, self.registration.brokerString
            if client is None or url is None:
                return False
            record, _ = await readRecord(client, self.path, self.reactor)
            return record is not None and record.master == url

        return defer.ensureDeferred(read())

    async def beat(self, client, url, role):
        """
        Rewrite this broker's state node.
        """
        state = {"role": role, "epoch": self.epoch}
        if self.describe is not None:
            state.update(self.describe())
        await writeState(client, "%s/%s" % (self.states, stateNodeName(url)), state, self.reactor)

    def _mark(self, named):
        if named:
            with open(self.marker, "w") as f:
                f.write(self.path + "\n")
        elif os.path.exists(self.marker):
            os.remove(self.marker)


class FencedProcessor:
    """
    The broker's processor with puts refused while the fence says so; every
    other request passes through.
    """

    def __init__(self, processor, fence):
        self.processor = processor
        self.fence = fence
        self._putBatchThen = putBatchThenOf(processor)
        if self._putBatchThen is None:
            # Its connections hand the wrapped processor the puts of a
            # batch one by one, as they would it.
            self.putBatchThen = None

    def __getattr__(self, name):
        return getattr(self.processor, name)

    def processPut(self, command, session):
        if self.fence.refusal is not None:
            return refuse(self.fence, self.processor, command)
        return self.processor.processPut(command, session)

    def putBatchThen(self, puts, session, replied):
        """
        The wrapped processor's bulk path for the puts of one read
        (L{metamorphosis.broker.server.BrokerProcessor.putBatchThen}), or
        each refused while the fence says so.
        """
        if self.fence.refusal is not None:
            return Replies(b"".join([refuse(self.fence, self.processor, put).encode() for put in puts]))
        return self._putBatchThen(puts, session, replied)

    def putThen(self, command, session, replied):
        """
        L{processPut} as the broker's connections call it (see
        L{metamorphosis.broker.server.BrokerProcessor.putThen}): the
        processors a fence wraps, the broker's and the sync master's, have
        C{putThen}, so a fenced broker's puts cost no Deferred either.
        """
        if self.fence.refusal is not None:
            return refuse(self.fence, self.processor, command)
        return self.processor.putThen(command, session, replied)


class FencedTransactions:
    """
    The transaction processor with everything that could write refused
    while the fence says so.
    """

    def __init__(self, transactions, processor, fence):
        self.transactions = transactions
        self.processor = processor
        self.fence = fence

    def __getattr__(self, name):
        return getattr(self.transactions, name)

    def processPut(self, command, session):
        if self.fence.refusal is not None:
            return refuse(self.fence, self.processor, command)
        return self.transactions.processPut(command, session)

    def processTransaction(self, command, session):
        if self.fence.refusal is not None and command.type not in ("END", "RECOVER"):
            return ResultCommand(INTERNAL_ERROR, ("Fenced: %s" % (self.fence.refusal,)).encode("utf-8"), command.opaque)
        return self.transactions.processTransaction(command, session)


def refuse(fence, processor, command):
    """
    The reply to a put on a fenced broker: the broker's put error with the
    reason, so that a producer retries elsewhere.
    """
    text = processor.genErrorMessage(command.topic, command.partition) + "Detail:%s" % (fence.refusal,)
    return ResultCommand(INTERNAL_ERROR, text.encode("utf-8"), command.opaque)


def installFence(broker):
    """
    Fence a broker that registers as a master (docs/ha.md): its puts and
    transactions go through the fence, which runs beside it.

    @return: the L{Fence}, or L{None} for a broker without ZooKeeper.
    """
    registration = broker.zookeeper
    if registration is None:
        return None
    replication = getattr(broker, "replication", None)
    describe = None if replication is None else (lambda: dict(replication.stateItems()))
    fence = Fence(registration, broker.config.dataPath, broker.reactor, describe)
    factory = broker.factory
    processor = factory.processor
    factory.processor = FencedProcessor(processor, fence)
    factory.transactionProcessor = FencedTransactions(factory.transactionProcessor, processor, fence)
    return fence
