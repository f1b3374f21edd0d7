"""
The broker's log as one JSON object per line, for log shippers:

    twistd -n --logger=metamorphosis.broker.jsonlog.observer metaq --config server.ini

(C{twist --log-format=json metaq ...} is Twisted's own JSON format: the
same events, each line starting with a record separator, and C{log_logger}
and C{log_source} written as C{{"unpersistable": true}}.)

Every field of the broker's own events is a plain value (addresses are
C{host:port} strings); here C{log_source} becomes the name of its class,
C{log_logger} is left out, a failure becomes its type, message and
traceback, and any other value that JSON cannot hold becomes its C{repr},
so that no line carries an C{unpersistable} marker.
"""

import json
import sys

from twisted.logger import FileLogObserver, formatEvent
from twisted.python.failure import Failure


def _plain(value):
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def portable(event):
    """
    A copy of C{event} whose every value JSON can hold.
    """
    plain = {}
    for key, value in event.items():
        if key == "log_logger":
            continue
        if key == "log_source":
            if value is not None:
                kind = value if isinstance(value, type) else type(value)
                value = "%s.%s" % (kind.__module__, kind.__qualname__)
        elif key == "log_level":
            value = value.name
        elif isinstance(value, Failure):
            value = {"type": "%s.%s" % (value.type.__module__, value.type.__qualname__),
                     "message": value.getErrorMessage(), "traceback": value.getTraceback()}
        else:
            value = _plain(value)
        plain[key] = value
    plain["message"] = formatEvent(event)
    return plain


def _line(event):
    return json.dumps(portable(event), sort_keys=True) + "\n"


def observer(outFile=None):
    """
    The log observer factory for C{twistd --logger}: JSON lines on stdout
    (or C{outFile}).
    """
    return FileLogObserver(outFile or sys.stdout, _line)
