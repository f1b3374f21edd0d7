"""
The pluggable parts of the message store.

The transaction and replication code wrap a partition store (a sync master
forwards each append to its slave before acknowledging it; an async slave
appends records it fetched from the master), so they code against
L{IMessageStore} rather than the class.  Retention is pluggable the way the
Java C{DeletePolicy} is.
"""

from zope.interface import Attribute, Interface


class IMessageStore(Interface):
    """
    One partition's log: an append-only byte stream of stored records cut
    into segment files, addressed by absolute byte offsets.
    """

    topic = Attribute("The topic name.")
    partition = Attribute("The partition number.")
    minOffset = Attribute("Start offset of the first segment.")
    maxOffset = Attribute(
        "The flushed high-water mark: the end of the data consumers may see."
    )
    messageCount = Attribute(
        "Records in the recovered last segment plus one per append since "
        "start-up (a batch counts as one, as in Java)."
    )
    sizeInBytes = Attribute("Bytes written to the segment files.")

    def append(msgId, flag, body, checksum=None):
        """
        Append one record built from a put body.

        @param checksum: the body's checksum when already known (the put's
            own, verified): it is then not computed again.

        @return: a Deferred firing with the record's offset once the put may
            be acknowledged: after the write under a count/interval flush
            policy, after the fsync under group commit.  It errbacks when the
            write fails.
        """

    def appendThen(msgId, flag, body, checksum, stored, failed):
        """
        L{append} without a Deferred: C{stored} is called with the record's
        offset when L{append}'s Deferred would fire, C{failed} with a
        L{twisted.python.failure.Failure} when it would errback; either may
        be called before this returns.  The broker's put path: a put then
        costs no Deferred and no callback chain.
        """

    def appendRecordsThen(buffer, count, stored, failed):
        """
        Append C{count} records already encoded in C{buffer}, their
        checksums verified by the caller (a sync slave's syncs of one read
        to this partition), as one append: C{stored} is called once with
        the offset of the first, C{failed} with a
        L{twisted.python.failure.Failure}, either maybe before this
        returns.  The segment rolls between them where it would for one
        append per record.
        """

    def appendBatch(messages, durable=True):
        """
        Append several records, given as C{(msgId, flag, body)} tuples, as
        one contiguous write (a transaction commit).

        @param durable: when false, the Deferred fires once the records are
            written, without an fsync of their own even under group commit:
            the caller keeps them durable elsewhere (the transaction
            journal) until L{whenFlushed} says an fsync covered them.  They
            are served to consumers only from then on, as every record.
        @return: a Deferred firing with the offset of the first record.
        """

    def appendBatchThen(messages, durable, stored, failed):
        """
        L{appendBatch} without a Deferred: C{stored} is called with the
        offset of the first record, C{failed} with a
        L{twisted.python.failure.Failure}, either maybe before this
        returns (a transaction's commit).
        """

    def whenFlushed(end):
        """
        Wait, without causing an fsync, until one covers the bytes before
        offset C{end}.

        @return: a Deferred firing then; it errbacks when an fsync fails or
            the segment file is lost first.
        """

    def whenFlushedThen(end, flushed, failed):
        """
        L{whenFlushed} without a Deferred: C{flushed} is called with
        L{None}, or C{failed} with a L{twisted.python.failure.Failure},
        either maybe before this returns.
        """

    def appendRecords(buffer, expectedOffset=None):
        """
        Append an already-built buffer of complete records (replication).

        @param expectedOffset: when not L{None}, the buffer must land exactly
            at this offset, otherwise the Deferred errbacks with
            L{metamorphosis.broker.store.errors.OffsetMismatch} and nothing
            is written.
        @return: a Deferred firing with the offset of the buffer.
        """

    def slice(offset, maxSize):
        """
        A view of at most C{maxSize} bytes from C{offset}, never crossing a
        segment end.

        @return: a L{MessageSlice}, or L{None} when C{offset} is at or past
            the high-water mark.
        @raise OffsetBeforeStart: C{offset} is below L{minOffset}.
        """

    def awaitsFlush(offset, size):
        """
        Whether a read of C{size} bytes from C{offset} would reach records
        that are written but served only once the next L{flush} covers
        them (see C{appendBatch}'s C{durable}).
        """

    def readRecords(offset, maxSize):
        """
        Read and verify the records at C{offset} in a thread.

        @return: a Deferred firing with C{(records, nextOffset)}; it errbacks
            with L{metamorphosis.broker.store.errors.CorruptRecord} when a
            record fails its checksum, after logging it.
        """

    def nearestOffset(offset):
        """
        The start of the segment holding C{offset}; L{minOffset} below the
        log, L{maxOffset} at or after its end.
        """

    def flush():
        """
        Fsync what was written.  Under group commit only batches appended
        with C{durable=False} can be unflushed: a no-op without them.

        @return: a Deferred firing when done.
        """

    def runDeletePolicy(now=None):
        """
        Apply the retention policy to the segments before the active one.

        @return: a Deferred firing with the list of segment start offsets
            removed.
        """

    def close():
        """
        Write what is queued, flush, and close the segment files.

        @return: a Deferred firing when done.
        """


class IDeletePolicy(Interface):
    """
    What happens to an old segment file (Java C{DeletePolicy}).
    """

    name = Attribute("The policy name: C{delete} or C{archive}.")

    def canDelete(path, now):
        """
        Whether the segment file at C{path} is due (C{now} in seconds since
        the epoch).  Runs in a thread: it may stat the file.
        """

    def process(path):
        """
        Dispose of the segment file at C{path}, which the store no longer
        uses.  Runs in a thread.
        """


class IFsync(Interface):
    """
    Makes what was written to a file durable for the reactor thread
    without blocking it: its data and size, as C{fdatasync(2)} does
    (L{metamorphosis.broker.store.fsync}).
    """

    roundsInThreads = Attribute(
        """
        How many of the fsyncs asked for are running (or waiting to run) in
        a pool thread now.  Such a thread needs the GIL to end its round, so
        a reactor that polls instead of sleeping
        (L{metamorphosis.broker.idlepoll}) holds off meanwhile.
        """
    )

    def fsync(fd):
        """
        Make what was written to C{fd} durable.

        @return: a Deferred firing with L{None} on the reactor thread once
            it is, or failing with the C{OSError} C{fdatasync(2)} gave.
        """

    def fsyncThen(fd, done):
        """
        L{fsync} without a Deferred: C{done} is called on the reactor
        thread with L{None} once what was written to C{fd} is durable, or
        with a L{twisted.python.failure.Failure} of the C{OSError}
        C{fdatasync(2)} gave; maybe before this returns.  What a store's group
        commit rounds use: no Deferred per round.
        """

    def keepAwake():
        """
        Group commit goes on and the disk is about to wait for the next
        round (one ended with nothing to sync next, or requests arrived
        that the broker is about to parse): a provider that keeps the
        disk awake between rounds sends it a request if it has had none
        for a while; any other does nothing
        (L{metamorphosis.broker.store.fsync.KernelFsync.keepAwake}).
        """

    def close():
        """
        Release what the provider holds; no fsync may be pending.
        """
