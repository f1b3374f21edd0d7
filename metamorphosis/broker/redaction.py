"""
Secrets out of the configuration text that C{stats config} returns.

C{stats config} sends the broker's C{server.ini} to anyone allowed to ask
(Java sends it verbatim). Key passwords of TLS listeners, database
passwords and the like never leave the broker: their values are replaced by
L{MASK}, and the file keeps its shape so that an operator still sees which
keys are set.
"""

import re

MASK = "******"

#: Names that hold a secret: a key or an endpoint argument containing one.
_SECRET = r"[\w.-]*(?:password|passwd|passphrase|secret|token|credential)[\w.-]*"

#: A whole C{key = value} line whose key names a secret.
_SECRET_KEY = re.compile(
    rb"^(?P<key>[ \t]*" + _SECRET.encode() + rb"[ \t]*[=:][ \t]*)(?P<value>.*?)(?P<end>\r?)$",
    re.IGNORECASE | re.MULTILINE,
)

#: A C{name=value} argument of an endpoint string (arguments end at an
#: unescaped colon) or of a query string.
_SECRET_ARGUMENT = re.compile(
    rb"(?P<key>(?:^|(?<=[:;&?,\s]))" + _SECRET.encode() + rb"=)(?P<value>(?:\\.|[^:;&,\s\\])*)",
    re.IGNORECASE | re.MULTILINE,
)

#: The password of a URL's user information: C{scheme://user:password@host}.
_URL_PASSWORD = re.compile(rb"(?P<key>[a-z][\w+.-]*://[^:/@\s]*:)(?P<value>[^@/\s]*)(?=@)",
                           re.IGNORECASE)


def redactSecrets(data):
    """
    C{data} (the bytes of a configuration file) with every secret value
    replaced by L{MASK}.
    """
    mask = MASK.encode()
    data = _SECRET_KEY.sub(lambda m: m.group("key") + mask + m.group("end"), data)
    data = _SECRET_ARGUMENT.sub(lambda m: m.group("key") + mask, data)
    return _URL_PASSWORD.sub(lambda m: m.group("key") + mask, data)
