"""
From configuration to replication mode: which L{IReplication} provider a
broker runs with.
"""

from metamorphosis.ha.config import parsePluginOption, replicationConfigFor


def replicationFor(serverIni, option=None, reactor=None):
    """
    The replication mode of a broker started with C{serverIni}.

    @param option: the C{--replication} value (C{NAME} or C{NAME=FILE}), or
        L{None} to use the plugin file beside C{serverIni}, if any.
    @return: an L{IReplication} provider, or L{None} for a plain broker.
    @raise metamorphosis.ha.config.ReplicationConfigError: bad option or
        file.
    """
    plugin, path = parsePluginOption(option) if option else (None, None)
    config = replicationConfigFor(serverIni, plugin, path)
    if config is None:
        return None
    if config.plugin == "gregor":
        from metamorphosis.ha.gregor import GregorReplication

        return GregorReplication(config)
    if config.plugin == "samsa":
        from metamorphosis.ha.samsa import SamsaReplication

        return SamsaReplication(config, reactor)
    from metamorphosis.ha.metaslave import MetaslaveReplication

    return MetaslaveReplication(config, reactor)
