"""
A log file whose rotated files are bounded, for C{twistd --logger}.

C{twistd --logfile} rotates its file every megabyte and keeps every rotated
file, so a broker under attack, or just running for long, fills its disk
with logs (the data disk, often). L{observer} is the same text log with a
size and a number of rotated files chosen by the operator; the oldest file
goes when a new one is made::

    METAQ_LOG_FILE=/var/log/metaq/broker.log \\
        twistd --logger metamorphosis.broker.logfile.observer metaq --config server.ini

C{--logger} takes no arguments, hence the environment:

- C{METAQ_LOG_FILE}: the file (default C{metaq.log} in the working
  directory);
- C{METAQ_LOG_MAX_BYTES}: size at which it is rotated (default 10 MiB);
- C{METAQ_LOG_MAX_FILES}: rotated files kept, C{<file>.1} being the newest
  (default 10).
"""

import os

from twisted.logger import textFileLogObserver
from twisted.python.logfile import LogFile

DEFAULT_PATH = "metaq.log"
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_FILES = 10


def observer(environ=os.environ):
    """
    A text log observer writing to a bounded set of rotated files, as
    C{METAQ_LOG_FILE}, C{METAQ_LOG_MAX_BYTES} and C{METAQ_LOG_MAX_FILES}
    say.
    """
    path = environ.get("METAQ_LOG_FILE") or DEFAULT_PATH
    maxBytes = int(environ.get("METAQ_LOG_MAX_BYTES") or DEFAULT_MAX_BYTES)
    maxFiles = int(environ.get("METAQ_LOG_MAX_FILES") or DEFAULT_MAX_FILES)
    if maxBytes <= 0 or maxFiles < 0:
        raise ValueError("METAQ_LOG_MAX_BYTES must be positive and METAQ_LOG_MAX_FILES "
                         "not negative")
    logFile = LogFile.fromFullPath(path, rotateLength=maxBytes, maxRotatedFiles=maxFiles)
    return textFileLogObserver(logFile)
