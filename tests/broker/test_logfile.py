"""
Tests for L{metamorphosis.broker.logfile}.
"""

import os

from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from metamorphosis.broker.logfile import DEFAULT_PATH, observer


class ObserverTests(SynchronousTestCase):
    def test_boundedRotation(self):
        """
        The log is rotated at C{METAQ_LOG_MAX_BYTES} and only
        C{METAQ_LOG_MAX_FILES} rotated files are kept.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "broker.log")
        logObserver = observer({"METAQ_LOG_FILE": path, "METAQ_LOG_MAX_BYTES": "1000",
                                "METAQ_LOG_MAX_FILES": "3"})
        log = Logger(observer=logObserver)
        for i in range(500):
            log.info("line {i} of a log that would fill a disk", i=i)
        self.assertEqual(sorted(os.listdir(directory)),
                         ["broker.log", "broker.log.1", "broker.log.2", "broker.log.3"])
        with open(path) as f:
            self.assertIn("line 499 of a log", f.read())
        for name in os.listdir(directory):
            self.assertLess(os.path.getsize(os.path.join(directory, name)), 1200)

    def test_defaults(self):
        """
        Without the environment, C{metaq.log} in the working directory.
        """
        Logger(observer=observer({})).info("hello")
        self.addCleanup(os.remove, DEFAULT_PATH)
        with open(DEFAULT_PATH) as f:
            self.assertIn("hello", f.read())

    def test_badValues(self):
        self.assertRaises(ValueError, observer, {"METAQ_LOG_MAX_BYTES": "0"})
