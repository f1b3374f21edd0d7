"""
The pluggable parts of the broker.

The transaction and replication (HA) work plug their request handling into
L{metamorphosis.broker.server.BrokerFactory} through these interfaces, and
users plug server-side consumer filters in through C{server.ini}.
"""

from zope.interface import Attribute, Interface


class IMessageFilter(Interface):
    """
    A server-side consumer filter, named in C{server.ini} as
    C{[topic=NAME] group.<consumerGroup>=<dotted.path>} (the Java
    C{ConsumerMessageFilter}): a C{get} from that group only receives the
    messages the filter accepts.
    """

    def accept(group, message):
        """
        Whether C{group} should receive C{message}.

        @param message: a L{metamorphosis.protocol.records.Record}: C{id},
            C{flag}, C{data}, C{attribute}.
        @return: L{bool}. An exception counts as a refusal (and is logged).
        """


class ISession(Interface):
    """
    One client connection as the request processors see it.
    """

    context = Attribute(
        "A dict for per-connection state of processors (e.g. the local "
        "transactions of this connection, keyed as the processor likes)."
    )
    peer = Attribute("The remote address (an IAddress).")

    def closeWhenSilent(seconds):
        """
        Close this connection once nothing has been read from it for
        C{seconds}; L{None}: after the broker's idle timeout again.
        """


class ITransactionProcessor(Interface):
    """
    Handles C{transaction} commands and puts that carry a transaction key
    (docs/protocol.md).

    Every method returns a reply (a command with C{encode()}), L{None} for
    no reply, or a Deferred firing with one of those.
    """

    def processTransaction(command, session):
        """
        Answer a L{metamorphosis.protocol.commands.TransactionCommand}:
        the reply, a Deferred firing with it (a command that waits for the
        journal), or L{None} (END, which has none).
        """

    def processPut(command, session):
        """
        Answer a L{metamorphosis.protocol.commands.PutCommand} whose
        C{transactionKey} is set.
        """

    def sessionClosed(session):
        """
        The connection of C{session} was lost.
        """


class ISyncProcessor(Interface):
    """
    Handles C{sync} (master to slave replication, ha.md); a broker without
    one answers C{sync} with 503 like a Java broker without the gregor
    plugin.
    """

    def processSync(command, session):
        """
        Answer a L{metamorphosis.protocol.commands.SyncCommand}: a reply, None,
        or a Deferred of one.
        """

    def syncThen(command, session, replied):
        """
        Answer a C{sync} without a Deferred: return the reply, or
        L{metamorphosis.broker.server.REPLY_LATER} and call C{replied} with
        the reply later (maybe before returning).  What the broker's
        connections call.
        """

    def syncBatchThen(syncs, session, replied):
        """
        Answer whole syncs that came one after the other in one read (a
        L{metamorphosis.protocol.commands.SyncBatch}, each sync already past
        the broker's checks of its topic and access), together: return a
        L{metamorphosis.broker.server.Replies} holding the reply to each,
        or L{metamorphosis.broker.server.REPLY_LATER} and call C{replied}
        with it later (maybe before returning).
        """

    def sessionClosed(session):
        """
        The connection of C{session} was lost (a master's link may be down).
        """
