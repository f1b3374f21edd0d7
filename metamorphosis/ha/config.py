"""
The replication plugins' configuration: MetaQ's C{samsa_master.properties},
C{gregor_slave.properties} and C{async_slave.properties} as typed objects.

Key names, defaults and validation are those of the Java plugins
(C{SamsaMasterBroker.init/setConfigs}, C{GregorSlaveBroker},
C{MetamorphosisSlaveBroker.putSlaveProperties}; docs/ha.md), so a file written for a Java broker configures ours the same way.
Keys this implementation adds are marked as such.

A broker finds its plugin file either by an explicit option or beside its
C{server.ini} (L{findPluginFile}).
"""

import os
import re
from dataclasses import dataclass

from metamorphosis.ha.properties import PropertiesError, readProperties
from metamorphosis.tls import ClientTLS

#: Plugin name (the Java C{-F<name>=} option) to the properties file the Java
#: start script passes for it (C{metaServer.sh}).
PLUGIN_FILES = {
    "samsa": "samsa_master.properties",
    "gregor": "gregor_slave.properties",
    "metaslave": "async_slave.properties",
}

#: The topic the samsa master probes a failed gregor slave with
#: (C{gregor/Constants.TEST_SLAVE_TOPIC}).
SLAVE_STATUS_TOPIC = "_metaq_slave_status_test"

_JAVA_INT = re.compile(r"[+-]?[0-9]+")


class ReplicationConfigError(ValueError):
    """
    A replication plugin file is missing, unreadable or holds a bad value;
    the message names the file and the key.
    """


def _cpus():
    return os.cpu_count() or 1


class _Reader:
    """
    Typed access to one properties file with Java's parsing rules: blank
    means absent, integers are C{Integer.parseInt}/C{Long.parseLong} decimal,
    booleans are C{Boolean.valueOf} (only C{true}, any case, is true).
    """

    def __init__(self, properties, source):
        self.properties = properties
        self.source = source

    def _error(self, key, message):
        return ReplicationConfigError("%s: %s %s" % (self.source, key, message))

    def text(self, key, default=None):
        value = self.properties.get(key, "").strip()
        return value if value else default

    def integer(self, key, default, minimum=None):
        value = self.text(key)
        if value is None:
            return default
        if not _JAVA_INT.fullmatch(value):
            raise self._error(key, "is not an integer: %r" % (value,))
        number = int(value)
        if minimum is not None and number < minimum:
            raise self._error(key, "must be at least %d, got %d" % (minimum, number))
        return number

    def interval(self, key, default, least):
        """
        Milliseconds that are either 0 (off) or at least C{least}: less
        would make the broker busy for nothing, or take a healthy link for
        a dead one.
        """
        number = self.integer(key, default, minimum=0)
        if 0 < number < least:
            raise self._error(key, "must be 0 (off) or at least %d, got %d" % (least, number))
        return number

    def boolean(self, key, default):
        value = self.text(key)
        if value is None:
            return default
        return value.lower() == "true"


def _clientTLS(read):
    """
    The C{tls.*} keys: how this broker connects to its peer over TLS
    (docs/security.md), or L{None} for plain TCP.
    """
    caCerts = read.text("tls.caCerts")
    certificate = read.text("tls.certificate")
    if caCerts is None and certificate is None and read.text("tls.enabled") != "true":
        return None
    return ClientTLS(caCerts=caCerts, certificate=certificate,
                     privateKey=read.text("tls.privateKey"), hostname=read.text("tls.hostname"))


@dataclass(frozen=True)
class SamsaMasterConfig:
    """
    C{samsa_master.properties}: a synchronous replication master.

    @ivar slave: the gregor slave's C{host:port} (required).
    @ivar callbackThreadCount: parsed for compatibility; replies are handled
        on the reactor here, so it has no effect.
    @ivar recoverOffset: correct consumer offsets in ZooKeeper before
        registering (docs/ha.md).
    @ivar tls: (ours) a L{ClientTLS} to reach the slave over TLS; C{slave}
        is then the address of the slave's TLS listener.
    @ivar linkHeartbeatMs: (ours) send the slave a C{version} request after
        this long without sending it anything, and say so in this master's
        failover state node, so that a slave can take a link that has been
        silent for several of these for a dead master (docs/ha.md); 0: the
        Java master's 10 s heartbeat, and nothing said.
    """

    slave: str
    callbackThreadCount: int
    recoverOffset: bool = False
    recoverParallel: bool = True
    recoverParallelHint: int = 1
    sendToSlaveTimeoutInMills: int = 2000
    slaveContinuousFailureThreshold: int = 100
    checkSlaveIntervalInMills: int = 100
    tls: ClientTLS | None = None
    linkHeartbeatMs: int = 300

    plugin = "samsa"

    @property
    def slaveAddress(self):
        """
        The slave as C{(host, port)}.
        """
        host, _, port = self.slave.rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def slaveUrl(self):
        """
        The slave as the Java master names it in error replies.
        """
        return "meta://" + self.slave

    @classmethod
    def fromProperties(cls, properties, source="samsa_master.properties"):
        read = _Reader(properties, source)
        slave = read.text("slave")
        if slave is None:
            raise ReplicationConfigError("%s: slave is required (host:port of the gregor slave)" % (source,))
        host, _, port = slave.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ReplicationConfigError("%s: slave must be host:port, got %r" % (source, slave))
        return cls(
            slave=slave,
            callbackThreadCount=read.integer("callbackThreadCount", 3 * _cpus(), minimum=1),
            recoverOffset=read.boolean("recoverOffset", False),
            recoverParallel=read.boolean("recoverParallel", True),
            recoverParallelHint=read.integer("recoverParallelHint", _cpus(), minimum=1),
            sendToSlaveTimeoutInMills=read.integer("sendToSlaveTimeoutInMills", 2000, minimum=1),
            slaveContinuousFailureThreshold=read.integer("slaveContinuousFailureThreshold", 100, minimum=1),
            checkSlaveIntervalInMills=read.integer("checkSlaveIntervalInMills", 100, minimum=1),
            tls=_clientTLS(read),
            linkHeartbeatMs=read.interval("linkHeartbeatMs", 300, least=10),
        )


@dataclass(frozen=True)
class GregorSlaveConfig:
    """
    C{gregor_slave.properties}: a synchronous replication slave.  The Java
    plugin reads no key from it.

    @ivar autoPromote: (ours) watch the master in ZooKeeper and take its
        place when it has been gone for C{promoteAfterMs}
        (L{metamorphosis.ha.failover}); the slave then uses the
        C{[zookeeper]} section of its C{server.ini}, which the Java slave
        ignores.
    @ivar promoteAfterMs: (ours) how long the master must be gone first.
    @ivar masterGraceMs: (ours) take over without waiting for the master's
        ZooKeeper session to expire once the master's link is down and its
        beat in ZooKeeper has not changed for this long; 0 turns this off.
    @ivar masterSilenceMs: (ours) for that, a link on which nothing has
        been read for this long (or three of the heartbeat intervals its
        master announces, if longer) is closed, and so down - only while
        the master announces in ZooKeeper that it heartbeats its link
        (C{linkHeartbeatMs}); 0 turns this off.
    """

    autoPromote: bool = False
    promoteAfterMs: int = 5000
    masterGraceMs: int = 1200
    masterSilenceMs: int = 1000

    plugin = "gregor"

    @classmethod
    def fromProperties(cls, properties, source="gregor_slave.properties"):
        read = _Reader(properties, source)
        return cls(
            autoPromote=read.boolean("autoPromote", False),
            promoteAfterMs=read.integer("promoteAfterMs", 5000, minimum=0),
            masterGraceMs=read.integer("masterGraceMs", 1200, minimum=0),
            masterSilenceMs=read.interval("masterSilenceMs", 1000, least=100),
        )


@dataclass(frozen=True)
class AsyncSlaveConfig:
    """
    C{async_slave.properties}: an asynchronous replication slave
    (metaslave), docs/ha.md.

    @ivar slaveId: this slave's number under its master (required, >= 0).
    @ivar slaveGroup: the consumer group it pulls the master with.
    @ivar slaveMaxDelayInMills: the longest back-off of an idle pull.
    @ivar autoSyncMasterConfig: copy the master's C{server.ini} when its
        checksum changes.
    @ivar autoPromote: (ours) promote this slave to master when the master
        has been gone from ZooKeeper for C{promoteAfterMs}
        (L{metamorphosis.ha.failover}).
    @ivar promoteAfterMs: (ours) how long the master must be gone first.
    @ivar tls: (ours) a L{ClientTLS} to pull from the master over TLS, at
        the address the master registers in C{ids/<id>/tls-master}.
    """

    slaveId: int
    slaveGroup: str
    slaveMaxDelayInMills: int = 500
    autoSyncMasterConfig: bool = False
    autoPromote: bool = False
    promoteAfterMs: int = 5000
    tls: ClientTLS | None = None

    plugin = "metaslave"

    @classmethod
    def fromProperties(cls, properties, source="async_slave.properties"):
        read = _Reader(properties, source)
        if read.text("slaveId") is None:
            raise ReplicationConfigError("%s: slaveId is required" % (source,))
        slaveId = read.integer("slaveId", None, minimum=0)
        return cls(
            slaveId=slaveId,
            slaveGroup=read.text("slaveGroup", "meta-slave-group_%d" % (slaveId,)),
            slaveMaxDelayInMills=read.integer("slaveMaxDelayInMills", 500, minimum=0),
            autoSyncMasterConfig=read.boolean("autoSyncMasterConfig", False),
            autoPromote=read.boolean("autoPromote", False),
            promoteAfterMs=read.integer("promoteAfterMs", 5000, minimum=0),
            tls=_clientTLS(read),
        )


_CONFIG_CLASSES = {
    "samsa": SamsaMasterConfig,
    "gregor": GregorSlaveConfig,
    "metaslave": AsyncSlaveConfig,
}


def loadPluginConfig(plugin, path):
    """
    Read the properties file of one replication plugin.

    @param plugin: C{samsa}, C{gregor} or C{metaslave}.
    @raise ReplicationConfigError: unknown plugin, unreadable file, bad value.
    """
    try:
        configClass = _CONFIG_CLASSES[plugin]
    except KeyError:
        raise ReplicationConfigError(
            "unknown replication plugin %r (expected one of %s)" % (plugin, ", ".join(sorted(_CONFIG_CLASSES)))
        ) from None
    try:
        properties = readProperties(path)
    except PropertiesError as e:
        raise ReplicationConfigError(str(e)) from e
    return configClass.fromProperties(properties, path)


def findPluginFile(serverIni):
    """
    The replication plugin whose properties file lies beside C{serverIni}.

    Java MetaQ drops every other plugin when C{metaslave} is given; a
    directory holding both a samsa and a gregor file is ambiguous and
    rejected.

    @return: C{(plugin, path)} or L{None} when there is no such file.
    @raise ReplicationConfigError: if the choice is ambiguous.
    """
    folder = os.path.dirname(os.path.abspath(serverIni))
    found = [
        (plugin, os.path.join(folder, name))
        for plugin, name in PLUGIN_FILES.items()
        if os.path.isfile(os.path.join(folder, name))
    ]
    for plugin, path in found:
        if plugin == "metaslave":
            return plugin, path
    if len(found) > 1:
        raise ReplicationConfigError(
            "%s holds more than one replication plugin file (%s); name the one to use with --replication"
            % (folder, ", ".join(os.path.basename(path) for _, path in found))
        )
    return found[0] if found else None


def replicationConfigFor(serverIni, plugin=None, path=None):
    """
    The replication configuration a broker started with C{serverIni} runs
    with: the plugin named explicitly (its file given, or looked up beside
    C{serverIni} under the Java name), else whatever file lies beside
    C{serverIni}.

    @return: a L{SamsaMasterConfig}, L{GregorSlaveConfig} or
        L{AsyncSlaveConfig}, or L{None} for a plain broker.
    """
    if plugin is None:
        found = findPluginFile(serverIni) if serverIni else None
        if found is None:
            return None
        plugin, path = found
    elif path is None and plugin in PLUGIN_FILES:
        path = os.path.join(os.path.dirname(os.path.abspath(serverIni or ".")), PLUGIN_FILES[plugin])
    return loadPluginConfig(plugin, path)


def parsePluginOption(value):
    """
    Parse the value of C{--replication}: C{NAME} or C{NAME=FILE}, as the
    Java wrapper's C{-FNAME=FILE}.

    @return: C{(plugin, path or None)}
    """
    plugin, sep, path = value.partition("=")
    plugin = plugin.strip()
    if plugin not in PLUGIN_FILES:
        raise ReplicationConfigError(
            "unknown replication plugin %r (expected one of %s)" % (plugin, ", ".join(sorted(PLUGIN_FILES)))
        )
    return plugin, (path or None)


__all__ = [
    "PLUGIN_FILES",
    "SLAVE_STATUS_TOPIC",
    "AsyncSlaveConfig",
    "GregorSlaveConfig",
    "ReplicationConfigError",
    "SamsaMasterConfig",
    "findPluginFile",
    "loadPluginConfig",
    "parsePluginOption",
    "replicationConfigFor",
]
