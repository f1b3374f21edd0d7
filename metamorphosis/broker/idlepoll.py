"""
Polling for a client's next request for a moment instead of sleeping
(the C{[system]} key C{idlePollMicros}, docs/performance.md).

A client that waits for its reply before it sends again (a Java producer
with one sending thread, a consumer's fetches, a sync master's syncs once
it has them all answered) makes the round trip the rate, and part of every
round trip is waking the broker's CPU when the next request arrives.  On a
virtual machine whose kernel does not poll before it halts an idle CPU
(the 2-core test machines boot with C{haltpoll.guest_halt_poll_ns=0}),
that wake-up goes through the hypervisor: a loopback ping-pong between two
processes there takes 59 µs (median) against 13 µs with the kernel's halt
polling switched on.  So, much as Seastar's reactor does (Redpanda,
ScyllaDB: C{--idle-poll-time-us}), once a reply leaves its connection
waiting for nothing the broker keeps its reactor polling its sockets
(C{epoll_wait} with no timeout) for C{idlePollMicros}, and sleeps only
then.  A connection with requests still in flight (a Java producer's ten
threads on one connection) will have replies to send anyway; polling for
it only took CPU from the client's threads (23% fewer puts when the broker
polled after every read and reply).

Every turn yields the CPU first (C{sched_yield(2)}).  Linux runs an
asynchronous fsync (C{fsyncMethod=kernel}) in a worker bound to the CPU
that submitted it, and a reactor polling without yielding keeps that
worker off its CPU until the reactor's time slice is over: a lone put's
round trip went from 360 µs to 1.3 ms.  A yield that takes longer than
L{CONTENDED} means another task had this CPU meanwhile: the polling stops
until the next such reply, so a host whose CPUs are wanted elsewhere gets
them back.

Nor does it poll while a group commit fsync runs in a pool thread
(C{fsyncMethod=thread}, or C{auto} when it chose the thread): that thread
needs the GIL to end its round, and a reactor that polled took it back at
every turn.  A lone put's round trip under group commit went from 282-388
µs to 440-702 µs with the fsync in a thread and the reactor polling.

It is off by default, but on a gregor slave and a samsa master.  Beside
the real Java client on the 2-core test machine it made a producer's one
sending thread 5-33% faster, and a consumer 17% and ten producing threads
4-11% slower: their other threads needed the CPU it polled on
(docs/performance.md).  A sync slave's one client is its master, whose
every put waits for it; a sync master also polls after each write of
syncs to its slave (L{metamorphosis.ha.link.PeerLink.onSent}), whose
replies every replicated put waits for.
"""

import os
import time

from twisted.application import service

#: A yield that returns later than this (seconds) let another task run.
CONTENDED = 20e-6

#: A sync pair's C{idlePollMicros} when a broker's server.ini does not
#: say.  A gregor slave's one client is its master, which waits for its
#: reply to every replicated put; a samsa master waits for that reply
#: itself, once its syncs have left (it polls after each write to its
#: slave).  Either wake-up it saves is on every replicated put's path
#: (docs/ha.md).
SYNC_REPLICATION_MICROS = 1000


class IdlePoller(service.Service):
    """
    Keeps C{reactor} polling for C{window} seconds after each L{poke}.

    @param clock: a monotonic clock (a wall clock stepped back would poll
        for as long as it went back).
    @param yieldCPU: what gives the CPU to another task that wants it.
    @param threadsWorking: how many pieces of work now run in threads that
        need the GIL to end (the fsyncs of C{fsyncMethod=thread}): while
        there are any, the reactor sleeps instead.
    @ivar turns: reactor iterations spent polling.
    @ivar stops: pollings stopped early because the CPU was wanted.
    @ivar holds: pollings stopped early for work running in threads.
    """

    name = "idle-poll"

    def __init__(self, reactor, window, clock=time.monotonic, yieldCPU=os.sched_yield,
                 threadsWorking=lambda: 0):
        self._reactor = reactor
        self.window = window
        self._clock = clock
        self._yield = yieldCPU
        self._threadsWorking = threadsWorking
        self._until = 0.0
        self._call = None
        self.turns = 0
        self.stops = 0
        self.holds = 0

    def poke(self):
        """
        A client waits for nothing more: poll for the next C{window}
        seconds.
        """
        if not self.running:
            return
        self._until = self._clock() + self.window
        if self._call is None:
            self._call = self._reactor.callLater(0, self._turn)

    def _turn(self):
        # Scheduled for "now", this call makes the reactor's next poll one
        # that does not wait.
        self._call = None
        before = self._clock()
        if before >= self._until:
            return
        if self._threadsWorking():
            # Its end wakes the reactor, and the reply that follows pokes.
            self.holds += 1
            return
        self._yield()
        if self._clock() - before > CONTENDED:
            self.stops += 1
            return
        self.turns += 1
        self._call = self._reactor.callLater(0, self._turn)

    def stopService(self):
        service.Service.stopService(self)
        if self._call is not None:
            self._call.cancel()
            self._call = None
