"""
Tests for L{metamorphosis.broker.address}.
"""

from twisted.trial.unittest import TestCase

from metamorphosis.broker.address import brokerURL, localHost


class AddressTests(TestCase):
    def test_firstNonLoopbackIPv4(self):
        self.assertEqual(
            localHost(["127.0.0.1", "::1", "fd00::2", "10.1.2.3", "192.168.0.1"]),
            "10.1.2.3",
        )

    def test_ipv6InBrackets(self):
        """
        Without a usable IPv4 address the first non-loopback, non-link-local
        IPv6 address is used, in brackets.
        """
        self.assertEqual(
            localHost(["127.0.0.1", "::1", "fe80::1%eth0", "fd00::2"]), "[fd00::2]"
        )

    def test_loopbackOnly(self):
        self.assertEqual(localHost(["127.0.0.1", "::1"]), "127.0.0.1")

    def test_machineAddress(self):
        """
        The machine's own choice is an address, never a loopback one unless
        there is nothing else.
        """
        host = localHost()
        self.assertTrue(host)
        self.assertNotIn(host, ["::1", "[::1]"])

    def test_brokerURL(self):
        self.assertEqual(brokerURL("127.0.0.1", 8123), "meta://127.0.0.1:8123")
        self.assertEqual(brokerURL("fd00::2", 8123), "meta://[fd00::2]:8123")
        self.assertEqual(brokerURL("[fd00::2]", 1), "meta://[fd00::2]:1")
