"""
Tests for L{metamorphosis.ha.config}: the plugin files with the Java keys.
"""

import os
import shutil

from twisted.trial.unittest import SynchronousTestCase

from metamorphosis.ha.config import (
    AsyncSlaveConfig,
    GregorSlaveConfig,
    ReplicationConfigError,
    SamsaMasterConfig,
    findPluginFile,
    loadPluginConfig,
    parsePluginOption,
    replicationConfigFor,
)
from tests.captures import capturePath


def transcriptConf(*parts):
    """
    A file of the configurations of the captured Java brokers.
    """
    return str(capturePath("conf", *parts))


class SamsaMasterConfigTests(SynchronousTestCase):
    def test_defaults(self):
        config = SamsaMasterConfig.fromProperties({"slave": "10.0.0.2:8123"})
        self.assertEqual(config.slave, "10.0.0.2:8123")
        self.assertEqual(config.slaveAddress, ("10.0.0.2", 8123))
        self.assertEqual(config.slaveUrl, "meta://10.0.0.2:8123")
        self.assertEqual(config.sendToSlaveTimeoutInMills, 2000)
        self.assertEqual(config.slaveContinuousFailureThreshold, 100)
        self.assertEqual(config.checkSlaveIntervalInMills, 100)
        self.assertFalse(config.recoverOffset)
        self.assertTrue(config.recoverParallel)
        self.assertEqual(config.callbackThreadCount, 3 * (os.cpu_count() or 1))

    def test_values(self):
        config = SamsaMasterConfig.fromProperties(
            {
                "slave": "h:1",
                "recoverOffset": "TRUE",
                "recoverParallel": "yes",
                "sendToSlaveTimeoutInMills": "+50",
                "slaveContinuousFailureThreshold": "3",
                "checkSlaveIntervalInMills": " 7 ",
            }
        )
        self.assertTrue(config.recoverOffset)
        # Boolean.valueOf: only "true" is true.
        self.assertFalse(config.recoverParallel)
        self.assertEqual(
            (config.sendToSlaveTimeoutInMills, config.slaveContinuousFailureThreshold, config.checkSlaveIntervalInMills),
            (50, 3, 7),
        )

    def test_slaveRequired(self):
        for props in ({}, {"slave": "  "}):
            error = self.assertRaises(ReplicationConfigError, SamsaMasterConfig.fromProperties, props, "m.properties")
            self.assertIn("m.properties: slave is required", str(error))

    def test_badSlave(self):
        for slave in ("host", "host:", ":80", "h:x", "h:70000"):
            self.assertRaises(ReplicationConfigError, SamsaMasterConfig.fromProperties, {"slave": slave})

    def test_positive(self):
        """
        The timeout, the threshold and the interval must be > 0, as Java
        checks.
        """
        for key in ("sendToSlaveTimeoutInMills", "slaveContinuousFailureThreshold", "checkSlaveIntervalInMills"):
            error = self.assertRaises(
                ReplicationConfigError, SamsaMasterConfig.fromProperties, {"slave": "h:1", key: "0"}
            )
            self.assertIn(key, str(error))

    def test_notANumber(self):
        error = self.assertRaises(
            ReplicationConfigError, SamsaMasterConfig.fromProperties, {"slave": "h:1", "sendToSlaveTimeoutInMills": "2_000"}
        )
        self.assertIn("is not an integer", str(error))

    def test_linkHeartbeat(self):
        """
        C{linkHeartbeatMs} (ours): 300 by default, 0 turns it off, and
        anything between 0 and 10 is refused with a message naming it.
        """
        read = SamsaMasterConfig.fromProperties
        self.assertEqual(read({"slave": "h:1"}).linkHeartbeatMs, 300)
        self.assertEqual(read({"slave": "h:1", "linkHeartbeatMs": "0"}).linkHeartbeatMs, 0)
        self.assertEqual(read({"slave": "h:1", "linkHeartbeatMs": "10"}).linkHeartbeatMs, 10)
        for bad in ("5", "-1", "x"):
            error = self.assertRaises(ReplicationConfigError, read, {"slave": "h:1", "linkHeartbeatMs": bad}, "m.properties")
            self.assertIn("m.properties: linkHeartbeatMs", str(error))
        error = self.assertRaises(ReplicationConfigError, read, {"slave": "h:1", "linkHeartbeatMs": "5"})
        self.assertIn("must be 0 (off) or at least 10, got 5", str(error))


class GregorSlaveConfigTests(SynchronousTestCase):
    def test_defaults(self):
        self.assertEqual(GregorSlaveConfig.fromProperties({}), GregorSlaveConfig(False, 5000, 1200, 1000))

    def test_masterSilence(self):
        """
        C{masterSilenceMs} (ours): 0 turns it off; between 0 and 100 it is
        refused with a message naming it.
        """
        read = GregorSlaveConfig.fromProperties
        self.assertEqual(read({"masterSilenceMs": "0"}).masterSilenceMs, 0)
        self.assertEqual(read({"masterSilenceMs": "2500"}).masterSilenceMs, 2500)
        for bad in ("99", "-5", "1s"):
            error = self.assertRaises(ReplicationConfigError, read, {"masterSilenceMs": bad}, "s.properties")
            self.assertIn("s.properties: masterSilenceMs", str(error))


class AsyncSlaveConfigTests(SynchronousTestCase):
    def test_defaults(self):
        config = AsyncSlaveConfig.fromProperties({"slaveId": "3"})
        self.assertEqual(config, AsyncSlaveConfig(3, "meta-slave-group_3", 500, False))

    def test_blankGroup(self):
        self.assertEqual(AsyncSlaveConfig.fromProperties({"slaveId": "0", "slaveGroup": " "}).slaveGroup, "meta-slave-group_0")

    def test_slaveIdRequired(self):
        self.assertRaises(ReplicationConfigError, AsyncSlaveConfig.fromProperties, {})
        self.assertRaises(ReplicationConfigError, AsyncSlaveConfig.fromProperties, {"slaveId": "-1"})

    def test_transcriptFile(self):
        config = loadPluginConfig("metaslave", transcriptConf("ha-async-slave", "async_slave.properties"))
        self.assertEqual(config, AsyncSlaveConfig(0, "meta-slave-group", 500, False))


class FindPluginTests(SynchronousTestCase):
    def setUp(self):
        self.folder = self.mktemp()
        os.makedirs(self.folder)
        self.ini = os.path.join(self.folder, "server.ini")
        with open(self.ini, "w") as f:
            f.write("[system]\n")

    def write(self, name, text):
        with open(os.path.join(self.folder, name), "w") as f:
            f.write(text)

    def test_none(self):
        self.assertIsNone(findPluginFile(self.ini))
        self.assertIsNone(replicationConfigFor(self.ini))

    def test_beside(self):
        self.write("gregor_slave.properties", "")
        self.assertEqual(replicationConfigFor(self.ini), GregorSlaveConfig())

    def test_transcriptConfigs(self):
        """
        Each HA configuration of the conformance transcripts selects its
        plugin from the file beside its C{server.ini}.
        """
        expected = {"ha-sync-slave": "gregor", "ha-sync-master": "samsa", "ha-async-slave": "metaslave", "ha-async-master": None}
        for name, plugin in expected.items():
            config = replicationConfigFor(transcriptConf(name, "server.ini"))
            self.assertEqual(getattr(config, "plugin", None), plugin, name)

    def test_metaslaveWins(self):
        """
        As in Java, the metaslave plugin drops the others.
        """
        self.write("gregor_slave.properties", "")
        self.write("async_slave.properties", "slaveId=1\n")
        self.assertEqual(replicationConfigFor(self.ini).slaveId, 1)

    def test_ambiguous(self):
        self.write("gregor_slave.properties", "")
        self.write("samsa_master.properties", "slave=h:1\n")
        error = self.assertRaises(ReplicationConfigError, replicationConfigFor, self.ini)
        self.assertIn("more than one", str(error))

    def test_explicit(self):
        """
        A plugin named explicitly wins over the files beside server.ini; its
        file defaults to the Java name beside server.ini.
        """
        self.write("gregor_slave.properties", "")
        self.write("samsa_master.properties", "slave=h:1\n")
        self.assertEqual(replicationConfigFor(self.ini, "gregor"), GregorSlaveConfig())
        other = os.path.join(self.folder, "other.properties")
        shutil.copy(os.path.join(self.folder, "samsa_master.properties"), other)
        self.assertEqual(replicationConfigFor(self.ini, "samsa", other).slave, "h:1")

    def test_explicitMissing(self):
        error = self.assertRaises(ReplicationConfigError, replicationConfigFor, self.ini, "samsa")
        self.assertIn("samsa_master.properties", str(error))

    def test_option(self):
        self.assertEqual(parsePluginOption("gregor"), ("gregor", None))
        self.assertEqual(parsePluginOption("samsa=/x/y.properties"), ("samsa", "/x/y.properties"))
        self.assertRaises(ReplicationConfigError, parsePluginOption, "jettyBroker")
