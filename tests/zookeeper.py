"""
The shared ZooKeeper server of the test suite.

``scripts/test.sh`` (and so CI) starts one real ZooKeeper on a free loopback
port and exports its address as ``METAQ_TEST_ZK``.  Every test that needs
ZooKeeper gets a root of its own under it, so tests running in parallel never
see each other's znodes.
"""

import os
import uuid

from twisted.trial.unittest import SkipTest


def zookeeperAddress():
    """
    The ``host:port`` of the test ZooKeeper.

    @raise SkipTest: when the suite is run without one (run it through
        ``scripts/test.sh``, which starts it).
    """
    address = os.environ.get("METAQ_TEST_ZK")
    if not address:
        raise SkipTest("METAQ_TEST_ZK is not set; run the suite with scripts/test.sh")
    return address


def uniqueRoot(prefix="metaq-test"):
    """
    A ZooKeeper path no other test uses, to serve as a test's C{zk.zkRoot}.
    """
    return "/%s-%s" % (prefix, uuid.uuid4().hex[:12])
