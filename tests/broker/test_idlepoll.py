"""
Tests for L{metamorphosis.broker.idlepoll}: the reactor polling for a
moment after a request or reply instead of sleeping.
"""

from twisted.internet import defer, reactor
from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest

from metamorphosis.broker import idlepoll
from metamorphosis.broker.idlepoll import CONTENDED, IdlePoller
from tests.broker import test_service
from tests.broker.client import connect

WINDOW = 1e-3


class FakeCPU:
    """
    A monotonic clock, and a yield that lets C{yieldTakes} seconds pass.
    """

    def __init__(self):
        self.now = 100.0
        self.yieldTakes = 1e-6
        self.yields = 0

    def clock(self):
        return self.now

    def yieldCPU(self):
        self.yields += 1
        self.now += self.yieldTakes


class IdlePollerTests(unittest.TestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.cpu = FakeCPU()
        self.poller = IdlePoller(self.reactor, WINDOW, self.cpu.clock, self.cpu.yieldCPU)
        self.poller.startService()

    def polling(self):
        """
        Whether the reactor would poll without sleeping: a call is due now.
        """
        calls = self.reactor.getDelayedCalls()
        return bool(calls) and calls[0].getTime() <= self.reactor.seconds()

    def test_pollsForTheWindow(self):
        """
        After a poke the reactor is kept from sleeping, turn after turn
        (each yielding the CPU, here for 1 µs), until the window is over.
        """
        self.poller.poke()
        self.assertTrue(self.polling())
        self.reactor.advance(0)
        self.assertFalse(self.polling())
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertGreaterEqual(self.poller.turns, 990)
        self.assertLessEqual(self.poller.turns, 1001)
        self.assertEqual(self.cpu.yields, self.poller.turns)
        self.assertEqual(self.poller.stops, 0)

    def test_pokeExtendsTheWindow(self):
        """
        A poke while polling polls for a whole window from then, through
        the one call already scheduled.
        """
        self.poller.poke()
        self.cpu.now += WINDOW * 0.9
        self.poller.poke()
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        self.reactor.advance(0)
        self.assertGreaterEqual(self.poller.turns, 990)

    def test_contendedYieldStops(self):
        """
        A yield that took longer than L{CONTENDED} let another task run:
        the polling stops until the next poke.
        """
        self.cpu.yieldTakes = CONTENDED * 2
        self.poller.poke()
        self.reactor.advance(0)
        self.assertFalse(self.polling())
        self.assertEqual((self.poller.turns, self.poller.stops), (0, 1))
        self.cpu.yieldTakes = 1e-6
        self.poller.poke()
        self.assertTrue(self.polling())
        self.reactor.advance(0)
        self.assertGreaterEqual(self.poller.turns, 990)

    def test_threadsWorkingHold(self):
        """
        While work runs in threads that need the GIL (an fsync in a pool
        thread), the reactor sleeps instead of polling, without yielding:
        the polling resumes at the next poke once they are done.
        """
        working = [1]
        poller = IdlePoller(self.reactor, WINDOW, self.cpu.clock, self.cpu.yieldCPU,
                            threadsWorking=lambda: working[0])
        poller.startService()
        poller.poke()
        self.reactor.advance(0)
        self.assertFalse(self.polling())
        self.assertEqual((poller.turns, poller.holds, self.cpu.yields), (0, 1, 0))
        working[0] = 0
        poller.poke()
        self.reactor.advance(0)
        self.assertGreaterEqual(poller.turns, 990)
        self.assertEqual(poller.holds, 1)

    def test_onlyWhileRunning(self):
        """
        A stopped poller cancels its call and ignores pokes.
        """
        self.poller.poke()
        self.poller.stopService()
        self.assertFalse(self.polling())
        self.poller.poke()
        self.assertFalse(self.polling())


class BrokerIdlePollTests(unittest.TestCase):
    timeout = 60

    # A broker with its real store on a loopback port, as test_service
    # starts them (its TestCase is not imported, so trial runs it once).
    startBroker = test_service.BrokerServiceTests.startBroker
    config = test_service.BrokerServiceTests.config

    @defer.inlineCallbacks
    def test_putsKeepTheReactorPolling(self):
        """
        With C{idlePollMicros} the broker's reactor polls after the
        requests and replies of a real connection.
        """
        broker, port = yield self.startBroker(self.config(idlePollMicros=50000))
        poller = broker.factory.idlePoller
        self.assertEqual(poller.window, 0.05)
        client = yield connect(reactor, port)
        self.addCleanup(lambda: client.transport.loseConnection() or client.closed)
        for i in range(3):
            reply = yield client.put("t", 0, b"polled %d" % (i,), 0)
            self.assertEqual(reply.code, 200)
        self.assertGreater(poller.turns + poller.stops, 0)

    @defer.inlineCallbacks
    def test_threadFsyncsHoldThePolling(self):
        """
        With C{fsyncMethod=thread}, group commit puts keep the reactor from
        polling while their fsyncs run in a pool thread, and it polls again
        once their replies are out.
        """
        # Whether this machine is busy meanwhile (a yield that lets another
        # task run stops the polling) is not what this test is about: on a
        # loaded machine it left no turn to count.
        self.patch(idlepoll, "CONTENDED", 3600.0)
        broker, port = yield self.startBroker(
            self.config(idlePollMicros=50000, fsyncMethod="thread"))
        poller = broker.factory.idlePoller
        client = yield connect(reactor, port)
        self.addCleanup(lambda: client.transport.loseConnection() or client.closed)
        for i in range(5):
            reply = yield client.put("t", 0, b"synced %d" % (i,), 0)
            self.assertEqual(reply.code, 200)
        self.assertGreater(poller.holds, 0)
        self.assertGreater(poller.turns, 0)
        self.assertEqual(broker.storeManager.fsync.roundsInThreads, 0)

    @defer.inlineCallbacks
    def test_zeroTurnsItOff(self):
        """
        C{idlePollMicros=0}: no poller.
        """
        broker, port = yield self.startBroker(self.config(idlePollMicros=0))
        self.assertIsNone(broker.factory.idlePoller)
        self.assertNotIn("idle-poll", [s.name for s in broker.services])
