"""
The pure decision logic of the synchronous replication master: how the two
outcomes of one put become the producer's reply, and when a failing slave
takes the master out of service and how it comes back (docs/ha.md).  Kept free of sockets and stores so that every branch of the
Java reply matrix and of the failure threshold is tested with a L{Clock}.
"""

from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.logger import Logger

from metamorphosis.logfields import errorText
from metamorphosis.protocol.commands import ResultCommand, newResult
from metamorphosis.protocol.status import INTERNAL_ERROR, OK


class SyncPut:
    """
    One put on the sync master, waiting for its local append and its
    slave's reply (C{SamsaCommandProcessor.SyncAppendCallback}).

    The producer is answered once both are known:

      - both stored: C{200 "<id> <partition> <master offset>"};
      - the slave failed: C{500 Put message to [slave '<slave>'] ...};
      - the master failed: C{500 Put message to [master '<broker>'] ...}.

    When both failed the Java master never answers (the producer times
    out); here the producer is told at once with the master's error, which
    the Java producer handles the same way, only sooner.

    The reply goes to a callable, as the broker's connections take it
    (L{metamorphosis.broker.server.BrokerProcessor.putThen}), and the
    outcomes come in through this object's bound methods (the store's
    C{appendThen}, the link's C{sendFrame}): no Deferred and no closure
    per put.

    @param master: what the put reports to (the sync master's processor):
        C{slaveUrl}, C{brokerUrl()} (called only for the master's error
        text), C{putFailed(put)} (before a failed put's reply),
        C{health} (the L{SlaveHealth} told of each stored C{sync}),
        C{appendFailed(failure, put)}, C{slaveRefused(reply, put)} (a
        reply other than 200) and C{slaveUnreachable(failure, put)} (the
        last two decide, and call L{slaveFailed}).
    @param replied: called once with the producer's reply, a
        L{ResultCommand} carrying C{opaque}.
    """

    __slots__ = ("master", "topic", "partition", "msgId", "opaque", "replied", "_master", "_slave", "_offset")

    def __init__(self, master, topic, partition, msgId, opaque, replied):
        self.master = master
        self.topic = topic
        self.partition = partition
        self.msgId = msgId
        self.opaque = opaque
        self.replied = replied
        self._master = None
        self._slave = None
        self._offset = None

    def masterStored(self, offset):
        self._offset = offset
        self._master = True
        if self._slave is not None:
            self._complete()

    def masterFailed(self, failure):
        self.master.appendFailed(failure, self)
        self._master = False
        if self._slave is not None:
            self._complete()

    def slaveReplied(self, reply):
        if getattr(reply, "code", None) != OK:
            self.master.slaveRefused(reply, self)
            return
        self.master.health.succeeded()
        self._slave = True
        if self._master is not None:
            self._complete()

    def slaveUnreachable(self, failure):
        self.master.slaveUnreachable(failure, self)

    def slaveFailed(self):
        self._slave = False
        if self._master is not None:
            self._complete()

    def _complete(self):
        replied, self.replied = self.replied, None
        if replied is None:
            return
        if self._master and self._slave:
            replied(newResult(OK, b"%d %d %d" % (self.msgId, self.partition, self._offset), self.opaque))
            return
        # The error texts are made only for the puts that fail.
        where = "[partition '%s-%d'] failed" % (self.topic, self.partition)
        if self._master:
            text = "Put message to [slave '%s'] %s" % (self.master.slaveUrl, where)
        else:
            text = "Put message to [master '%s'] %s" % (self.master.brokerUrl(), where)
        self.master.putFailed(self)
        replied(ResultCommand(INTERNAL_ERROR, text.encode("utf-8"), self.opaque))


class SlaveHealth:
    """
    Counts consecutive failed slave replies and, at the threshold, takes
    the master out of ZooKeeper and probes the slave until it answers
    (C{SamsaCommandProcessor.removeMasterTemporaryAndTryToHeal}).

    @param probe: a callable returning a L{Deferred} that fires with the
        status code of one probe C{sync} (or fails).
    @param unregister: a callable (may return a L{Deferred}) removing the
        broker's registration from ZooKeeper.
    @param reregister: likewise, registering it again.
    @param intervalSeconds: pause between failed probes.
    """

    log = Logger()

    def __init__(self, threshold, intervalSeconds, probe, unregister, reregister, clock=None):
        if clock is None:
            from twisted.internet import reactor as clock
        self.threshold = threshold
        self.intervalSeconds = intervalSeconds
        self._probe = probe
        self._unregister = unregister
        self._reregister = reregister
        self._clock = clock
        self.consecutiveFailures = 0
        self.healing = None
        self._stopped = False
        self._pause = None

    def succeeded(self):
        """
        The slave stored a replicated put.
        """
        self.consecutiveFailures = 0

    def failed(self):
        """
        The slave answered a replicated put with an error or did not answer
        in time (a send that could not even start is not counted, as in
        Java).
        """
        self.consecutiveFailures += 1
        if self.consecutiveFailures >= self.threshold:
            self.consecutiveFailures = 0
            if self.healing is None:
                self.healing = defer.ensureDeferred(self._heal())
                self.healing.addErrback(lambda f: self.log.failure("Healing the slave link failed", f))

    def stop(self):
        """
        Stop probing (broker shutdown), leaving no timer behind.
        """
        self._stopped = True
        if self._pause is not None:
            self._pause.cancel()

    async def _heal(self):
        self.log.warn(
            "Slave failed {threshold} times in a row; unregistering this master from ZooKeeper until it is back",
            threshold=self.threshold,
        )
        try:
            await defer.maybeDeferred(self._unregister)
        except Exception:
            self.log.failure("Could not unregister the master from ZooKeeper")
        while not self._stopped:
            try:
                code = await self._probe()
            except Exception as e:
                self.log.info("Probing the slave failed: {error}", error=errorText(e))
                code = None
            if code == OK or self._stopped:
                break
            self._pause = deferLater(self._clock, self.intervalSeconds)
            try:
                await self._pause
            except defer.CancelledError:
                pass
            finally:
                self._pause = None
        if self._stopped:
            self.log.warn("Stopped probing the slave; the master stays unregistered")
            return
        self.log.warn("Slave is back; registering this master in ZooKeeper again")
        self.consecutiveFailures = 0
        try:
            await defer.maybeDeferred(self._reregister)
        except Exception:
            self.log.failure("Could not register the master in ZooKeeper again; restart it")
            return
        self.healing = None

