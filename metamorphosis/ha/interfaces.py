"""
The replication plug point.

A broker runs plain, or with one replication mode, as the Java wrapper runs
with one of its plugins (docs/ha.md).  Each mode is a provider of
L{IReplication}; the broker's service asks it, in this order, to adjust the
configuration (the Java plugin's C{init}, before anything is built), to plug
its request handling into the broker's factory, and for a service that runs beside the broker (the
Java plugin's C{start}/C{stop}).
"""

from zope.interface import Attribute, Interface


class IReplication(Interface):
    """
    One replication mode of a broker: the sync master (C{samsa}), the sync
    slave (C{gregor}) or the async slave (C{metaslave}).
    """

    name = Attribute("The Java plugin name: C{samsa}, C{gregor} or C{metaslave}.")

    slave = Attribute(
        "Whether the broker is a slave: it does not register as its broker "
        "id's master (nor is it fenced as one) unless it is promoted."
    )

    def configure(config):
        """
        Adjust the broker's L{metamorphosis.broker.config.MetaConfig} before
        the broker is built from it (add topics, disable or move the
        ZooKeeper registration).
        """

    def install(factory):
        """
        Plug this mode's request handling into the broker's
        L{metamorphosis.broker.server.BrokerFactory}: replace or wrap its
        C{processor}, C{transactionProcessor} and C{syncProcessor}.
        """

    def makeService(broker):
        """
        Return the L{twisted.application.service.IService} that runs this
        mode beside C{broker} (links to the peer, replication loops), or
        L{None}.
        """

    def statsItems():
        """
        Extra C{(key, value)} lines for the broker's C{stats} summary
        (replication state and lag).
        """

    def stateItems():
        """
        C{(key, value)} pairs for this broker's failover state node
        (docs/ha.md, L{metamorphosis.ha.failover.writeState}): what the
        admin tool shows of it and what its slave learns from it (a sync
        master's link heartbeat).
        """

    def partitionLags():
        """
        C{(topic, partition number, bytes behind the master)} of each
        partition an async slave replicates (the metrics endpoint); empty
        for the other modes.
        """
