"""
The examples of docs/security.md, run as written: the locked-down
C{server.ini} starts a broker (with certificates made here at the paths it
names, and free loopback ports instead of its fixed ones), the Python
example publishes through its mtls: listener in a process of its own, and
the async slave's properties load.
"""

import os
import re
import sys

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from metamorphosis.broker.config import parseConfig
from metamorphosis.broker.listeners import buildListeners
from metamorphosis.broker.service import BrokerService
from metamorphosis.ha.config import loadPluginConfig
from tests.tlscerts import CertificateAuthority

DOC = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "security.md")


def blocks(language):
    with open(DOC) as f:
        return re.findall(r"```%s\n(.*?)```" % (language,), f.read(), re.DOTALL)


class SecurityDocTests(unittest.TestCase):
    timeout = 120

    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        ca = CertificateAuthority(self.directory)
        for name, hosts in (("broker", ["127.0.0.1", "broker.example.com"]),
                            ("order-service", ()), ("slave-1", ())):
            ca.issue(name, hosts)

    def localize(self, text):
        """
        The example with its files in this test's directory.
        """
        return text.replace("/etc/metaq/", self.directory + "/")

    async def test_lockedDownBroker(self):
        (ini,) = [b for b in blocks("ini") if "[access]" in b and "[listeners]" in b]
        text = self.localize(ini)
        text = text.replace("tcp:8123:interface=10.0.0.5", "tcp:0:interface=127.0.0.1")
        text = text.replace("mtls:8443:", "mtls:0:interface=127.0.0.1:")
        text = text.replace("/var/lib/metaq", os.path.join(self.directory, "data"))
        config = parseConfig(text.encode(), "server.ini")
        self.assertTrue(config.access.enabled)
        self.assertEqual([name for name, _ in config.listeners], ["plain", "mtls"])
        config.zookeeper.zkEnable = False
        broker = BrokerService(config, buildListeners(reactor, config.listeners), reactor)
        broker.startService()
        self.addCleanup(broker.stopService)
        await broker.started
        tlsPort = broker.ports["mtls"].getHost().port

        (example,) = blocks("python")
        script = os.path.join(self.directory, "example.py")
        with open(script, "w") as f:
            f.write(self.localize(example).replace(
                "broker.example.com:8443", "127.0.0.1:%d" % (tlsPort,)))
        env = dict(os.environ, META_LOCALMESSAGE_PATH=os.path.join(self.directory, "local"),
                   META_ASYNC_STORAGE_PATH=os.path.join(self.directory, "async"))
        out, err, code = await getProcessOutputAndValue(sys.executable, [script], env=env,
                                                        path=self.directory)
        self.assertEqual((code, out), (0, b"stored\n"), err)
        stored = b"".join(
            broker.storeManager.getStore("orders-eu", p).slice(0, 4096).read()
            for p in range(4) if broker.storeManager.getStore("orders-eu", p) is not None
            and broker.storeManager.getStore("orders-eu", p).maxOffset)
        self.assertIn(b"order 42", stored)

    def test_slaveProperties(self):
        (properties,) = blocks("properties")
        path = os.path.join(self.directory, "async_slave.properties")
        with open(path, "w") as f:
            f.write(self.localize(properties))
        config = loadPluginConfig("metaslave", path)
        self.assertEqual(config.slaveId, 1)
        self.assertIsNotNone(config.tls.creatorFor("127.0.0.1"))

    def test_everyIniBlockParses(self):
        for ini in blocks("ini"):
            parseConfig(ini.encode(), "server.ini")
