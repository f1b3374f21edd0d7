"""
A blocking API for scripts and for programs that do not run a reactor.

L{ReactorThread} runs the Twisted reactor in a background daemon thread (a
small equivalent of crochet); L{ReactorThread.call} runs a function there
and blocks the calling thread until its result (or its Deferred's result)
is in.  L{BlockingProxy} turns the methods of an object living in the
reactor thread into blocking ones; the blocking session factory, its
producers, consumers and topic browsers below are such proxies (the
consumer also iterates, and runs its listeners in a thread pool of its
own; docs/client-consumer.md)::

    from metamorphosis.client.blocking import BlockingMessageSessionFactory
    from metamorphosis.client.message import Message
    from metamorphosis.client.session import MetaClientConfig

    with BlockingMessageSessionFactory(MetaClientConfig(zkConnect="127.0.0.1:2181")) as factory:
        producer = factory.createProducer()
        producer.publish("test")
        result = producer.send(Message("test", b"hello"))
"""

import atexit
import queue
import threading

from twisted.internet import defer, threads
from twisted.python import threadable
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from metamorphosis.client.consumer import asListener
from metamorphosis.client.errors import MetaClientError
from metamorphosis.client.interfaces import IMessageListener
from metamorphosis.client.producer import DEFAULT_SEND_TIMEOUT
from metamorphosis.client.session import MetaMessageSessionFactory


class ReactorThread:
    """
    The reactor, running in a daemon thread of its own.

    If the reactor is already running in another thread (a program that
    started it itself), that one is used.
    """

    def __init__(self, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self._thread = None
        self._lock = threading.Lock()

    def start(self):
        """
        Start the reactor thread if the reactor is not running yet.
        """
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self.reactor.running or (self._thread is not None and self._thread.is_alive()):
                return
            started = threading.Event()
            self.reactor.callWhenRunning(started.set)
            self._thread = threading.Thread(
                target=self.reactor.run,
                kwargs={"installSignalHandlers": False},
                name="metaq-reactor",
                daemon=True,
            )
            self._thread.start()
            atexit.register(self.stop)
            if not started.wait(30):
                raise RuntimeError("The reactor did not start")

    def inReactorThread(self):
        """
        Whether the caller is the reactor's own thread.
        """
        if self._thread is not None:
            return threading.current_thread() is self._thread
        return self.reactor.running and threadable.isInIOThread()

    def call(self, function, *args, timeout=None, **kwargs):
        """
        Run C{function(*args, **kwargs)} in the reactor thread and wait for
        its result; a Deferred result is waited for too.

        @param timeout: seconds to wait at most (L{None}: the operation's own
            timeouts bound it).
        @raise TimeoutError: C{timeout} passed (the operation is cancelled).
        @raise Exception: whatever the function raised or its Deferred
            failed with.
        """
        if self.inReactorThread():
            raise RuntimeError("A blocking call from the reactor thread would deadlock")
        self.start()
        # A plain lock, released by the reactor thread with the outcome in
        # place: cheaper than a Future's condition variable, and this is
        # paid on every blocking send.
        finished = threading.Lock()
        finished.acquire()
        outcome = []
        running = []

        def done(result):
            outcome.append(result)
            finished.release()

        def run():
            d = defer.maybeDeferred(function, *args, **kwargs)
            running.append(d)
            d.addBoth(done)

        self.reactor.callFromThread(run)
        if not finished.acquire(timeout=-1 if timeout is None else timeout):
            self.reactor.callFromThread(lambda: running and running[0].cancel())
            raise TimeoutError("No result within %s s" % (timeout,))
        result = outcome[0]
        if isinstance(result, Failure):
            result.raiseException()
        return result

    def callNoWait(self, function, *args, **kwargs):
        """
        Run C{function(*args, **kwargs)} in the reactor thread soon; do not
        wait for it.
        """
        self.start()
        self.reactor.callFromThread(function, *args, **kwargs)

    def stop(self):
        """
        Stop the reactor if this object started it, and wait for its thread.
        """
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        self.reactor.callFromThread(self.reactor.stop)
        thread.join(30)


_default = None
_defaultLock = threading.Lock()


def reactorThread():
    """
    The process's shared L{ReactorThread} (started on first use).
    """
    global _default
    with _defaultLock:
        if _default is None:
            _default = ReactorThread()
        return _default


class BlockingProxy:
    """
    A blocking view of an object that lives in the reactor thread.
    """

    def __init__(self, wrapped, thread=None):
        self.wrapped = wrapped
        self.thread = thread if thread is not None else reactorThread()

    def _call(self, method, *args, **kwargs):
        return self.thread.call(getattr(self.wrapped, method), *args, **kwargs)


class BlockingProducer(BlockingProxy):
    """
    A blocking L{MessageProducer}.
    """

    def publish(self, topic):
        return self._call("publish", topic)

    def setDefaultTopic(self, topic):
        return self._call("setDefaultTopic", topic)

    def send(self, message, timeout=DEFAULT_SEND_TIMEOUT):
        """
        Send C{message}; return its L{SendResult}.

        @raise metamorphosis.client.errors.MetaClientError: as
            L{MessageProducer.sendMessage} fails.
        """
        return self._call("sendMessage", message, timeout)

    sendMessage = send

    def shutdown(self):
        return self._call("shutdown")


class BlockingAsyncProducer(BlockingProducer):
    """
    A blocking view of an L{AsyncMessageProducer}: L{sendAsync} does not
    wait at all.
    """

    def sendAsync(self, message, timeout=DEFAULT_SEND_TIMEOUT):
        """
        Hand C{message} to the reactor thread for fire-and-forget sending.
        """
        self.thread.callNoWait(self.wrapped.asyncSendMessage, message, timeout)

    asyncSendMessage = sendAsync

    def flush(self):
        """
        Wait until every message handed over so far has been answered.
        """
        # The hand-over queue is FIFO: flush after the last sendAsync.
        return self._call("flush")


class BlockingTransactionalProducer(BlockingProducer):
    """
    A blocking L{TransactionalMessageProducer} or L{XAMessageProducer}.
    """

    def beginTransaction(self):
        return self._call("beginTransaction")

    def setTransactionTimeout(self, seconds):
        return self._call("setTransactionTimeout", seconds)

    def commit(self):
        return self._call("commit")

    def rollback(self):
        return self._call("rollback")

    def getXAResource(self):
        return BlockingXAResource(self._call("getXAResource"), self.thread)


class BlockingXAResource(BlockingProxy):
    """
    A blocking L{MetaXAResource}, as a JTA transaction manager calls it.
    """

    def start(self, xid, flags=0):
        return self._call("start", xid, flags)

    def end(self, xid, flags=0):
        return self._call("end", xid, flags)

    def prepare(self, xid):
        return self._call("prepare", xid)

    def commit(self, xid, onePhase):
        return self._call("commit", xid, onePhase)

    def rollback(self, xid):
        return self._call("rollback", xid)

    def forget(self, xid):
        return self._call("forget", xid)

    def recover(self, flags=0):
        return self._call("recover", flags)

    def setTransactionTimeout(self, seconds):
        return self._call("setTransactionTimeout", seconds)

    def isSameRM(self, other):
        return self.wrapped.isSameRM(getattr(other, "wrapped", other))


@implementer(IMessageListener)
class ThreadedListener:
    """
    Runs a blocking listener in a thread pool of its consumer's own, never
    in the reactor's: that one carries the ZooKeeper calls, which a slow
    listener must not hold up.
    """

    def __init__(self, listener, reactor, pool):
        self.listener = asListener(listener)
        self.reactor = reactor
        self.pool = pool

    def receiveMessages(self, message):
        return threads.deferToThreadPool(self.reactor, self.pool, self.listener.receiveMessages, message)


class _HandedOver:
    """
    A message waiting to be taken by the loop iterating a consumer, and
    whether it was consumed.
    """

    def __init__(self, message):
        self.message = message
        self.settled = threading.Event()
        self.consumed = False

    def settle(self, consumed):
        self.consumed = consumed
        self.settled.set()


class BlockingMessageConsumer(BlockingProxy):
    """
    A blocking L{metamorphosis.client.consumer.MessageConsumer}, made by
    L{BlockingMessageSessionFactory.createConsumer}.

    Two ways to consume:

      - subscribe without a listener and iterate::

            consumer.subscribe("test", 1024 * 1024)
            consumer.completeSubscribe()
            for message in consumer:
                ...

        A message counts as consumed (its offset may be committed) once
        the loop has taken it and asks for the next one or ends.  The loop
        ends when the consumer is shut down;

      - subscribe with listeners (callables taking the message, or objects
        with C{receiveMessages}) and call L{run}, which consumes until
        Ctrl-C or L{shutdown} from another thread.  Listeners run in this
        consumer's own thread pool (at most C{listenerThreads} at once,
        one message at a time per partition), so they may block.

    Either way L{shutdown} (also at the end of a C{with} block and of
    L{run}) stops fetching, commits the offsets and removes the
    consumer's znodes at once.
    """

    #: Listener threads of one consumer, at most (one per partition is
    #: enough to keep every partition busy).
    listenerThreads = 16

    def __init__(self, wrapped, thread, onShutdown=None):
        super().__init__(wrapped, thread)
        self._pool = ThreadPool(0, self.listenerThreads, "metaq-listeners-%s" % (wrapped.group,))
        self._inbox = queue.Queue()
        self._stopping = threading.Event()
        self._current = None
        self._iterating = False
        self._listening = False
        self._subscribed = False
        self._onShutdown = onShutdown

    def subscribe(self, topic, maxSize, listener=None, messageFilter=None):
        """
        Consume C{topic}, fetching at most C{maxSize} bytes at a time.

        @param listener: called with each message, in a listener thread;
            without one, the messages of C{topic} come out of iterating the
            consumer.
        @param messageFilter: an optional L{IConsumerMessageFilter}.
        @return: this consumer.
        """
        if listener is None:
            self._iterating = True
            listener = self._handOver
        else:
            self._listening = True
        threaded = ThreadedListener(listener, self.thread.reactor, self._pool)
        self._call("subscribe", topic, maxSize, threaded, messageFilter)
        return self

    def completeSubscribe(self):
        """
        Join the group and start consuming; returns after the first
        rebalance.
        """
        self._subscribed = True
        self._pool.start()
        self._call("completeSubscribe")
        return self

    def _handOver(self, message):
        # In a listener thread: wait until the iterating loop has taken the
        # message and moved on, or the consumer stops without taking it.
        item = _HandedOver(message)
        if not self._stopping.is_set():
            self._inbox.put(item)
            while not item.settled.wait(0.2):
                if self._stopping.is_set() and self._current is not item:
                    item.settle(False)
        if not item.consumed:
            message.setRollbackOnly()

    def __iter__(self):
        if not self._iterating:
            raise MetaClientError("Subscribe without a listener to iterate over a consumer")
        try:
            while True:
                item = self._take()
                if item is None:
                    return
                self._current = item
                yield item.message
                item.settle(True)
                self._current = None
        finally:
            if self._current is not None:
                self._current.settle(True)
                self._current = None

    def _take(self):
        while not self._stopping.is_set():
            try:
                return self._inbox.get(timeout=0.2)
            except queue.Empty:
                continue
        return None

    def run(self):
        """
        Consume with the subscribed listeners until Ctrl-C
        (C{KeyboardInterrupt}) or L{shutdown} from another thread, then
        shut down cleanly.  Joins the group first (L{completeSubscribe}) if
        that was not done, so that Ctrl-C while joining shuts down cleanly
        too.
        """
        if not self._listening:
            raise MetaClientError("run() needs listeners: subscribe(topic, maxSize, listener)")
        try:
            if not self._subscribed:
                self.completeSubscribe()
            while not self._stopping.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.shutdown()

    def shutdown(self):
        """
        Stop consuming: messages handed over but not taken by the loop stay
        unconsumed, the offsets are committed, the consumer leaves its
        group (its znodes are removed at once) and its listener threads end.
        """
        if self._stopping.is_set():
            return
        self._stopping.set()
        try:
            while True:
                self._inbox.get_nowait().settle(False)
        except queue.Empty:
            pass
        try:
            self._call("shutdown")
        finally:
            self._pool.stop()
            if self._onShutdown is not None:
                self._onShutdown(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()

    def get(self, topic, partition, offset, maxSize, brokerUrl, timeout=None):
        return self._call("get", topic, partition, offset, maxSize, brokerUrl, timeout)

    def ownedPartitions(self):
        return self._call("ownedPartitions")


class BlockingTopicBrowser(BlockingProxy):
    """
    A blocking L{metamorphosis.client.browser.TopicBrowser}: a plain
    iterator over the topic's messages.
    """

    def __iter__(self):
        while True:
            batch = self._call("nextBatch")
            if not batch:
                return
            yield from batch


class BlockingMessageSessionFactory(BlockingProxy):
    """
    A blocking L{MetaMessageSessionFactory}, started on construction and
    closed by L{close}, at the end of a C{with} block, or at the latest when
    the interpreter exits (so that its consumers' znodes go at once).
    """

    def __init__(self, config, thread=None):
        thread = thread if thread is not None else reactorThread()
        factory = thread.call(lambda: MetaMessageSessionFactory(config, thread.reactor).start())
        super().__init__(factory, thread)
        self._consumers = []
        self._closed = False
        atexit.register(self.close)

    def createConsumer(self, config, offsetStorage=None, recoverManager=None):
        """
        A L{BlockingMessageConsumer} of the group C{config.group} (see
        L{MetaMessageSessionFactory.createConsumer}).
        """
        return self._consumer(self._call("createConsumer", config, offsetStorage, recoverManager))

    def createBroadcastConsumer(self, config, offsetsPath=None, host=None, recoverManager=None):
        """
        A blocking broadcast consumer (see
        L{MetaMessageSessionFactory.createBroadcastConsumer}).
        """
        return self._consumer(
            self._call("createBroadcastConsumer", config, offsetsPath, host, recoverManager))

    def _consumer(self, consumer):
        blocking = BlockingMessageConsumer(consumer, self.thread, self._consumers.remove)
        self._consumers.append(blocking)
        return blocking

    def createTopicBrowser(self, topic, maxSize=1024 * 1024, timeout=5.0):
        """
        A L{BlockingTopicBrowser}: iterate it for every message of C{topic}
        from offset 0 (see L{MetaMessageSessionFactory.createTopicBrowser}).
        """
        return BlockingTopicBrowser(self._call("createTopicBrowser", topic, maxSize, timeout), self.thread)

    def createProducer(self, selector=None):
        return BlockingTransactionalProducer(self._call("createProducer", selector), self.thread)

    def createXAProducer(self, selector=None, uniqueQualifier=None):
        return BlockingTransactionalProducer(
            self._call("createXAProducer", selector, uniqueQualifier), self.thread
        )

    def createOrderedProducer(self, selector=None, saveToLocalWhenFailed=False):
        return BlockingProducer(
            self._call("createOrderedProducer", selector, saveToLocalWhenFailed), self.thread
        )

    def createAsyncProducer(self, selector=None, slidingWindowSize=20000):
        return BlockingAsyncProducer(
            self._call("createAsyncProducer", selector, slidingWindowSize), self.thread
        )

    def getStats(self, url, item=None, timeout=3.0):
        return self._call("getStats", url, item, timeout)

    def close(self):
        """
        Shut down the consumers and producers of this factory and close its
        connections and ZooKeeper session.
        """
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        for consumer in list(self._consumers):
            consumer.shutdown()
        self._call("close")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
