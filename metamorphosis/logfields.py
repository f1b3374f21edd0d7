"""
Values for the fields of log events.  Every field the broker logs must
serialise, so that the log can be written as JSON (C{twist
--log-format=json}, L{metamorphosis.broker.jsonlog}): addresses are given
as C{host:port} strings and exceptions as their text, never as objects.
"""


def hostPort(address):
    """
    C{host:port} of an address (L{twisted.internet.interfaces.IAddress}),
    the path of a UNIX address, or the text of anything else.
    """
    host = getattr(address, "host", None)
    if host is not None:
        return "%s:%s" % (host, address.port)
    name = getattr(address, "name", None)
    if isinstance(name, (str, bytes)):
        return name if isinstance(name, str) else name.decode("utf-8", "replace")
    return str(address)


def errorText(error):
    """
    The text of an exception, or its type's name when it has none.
    """
    return str(error) or type(error).__name__
