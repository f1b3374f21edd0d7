"""
Who may do what on a broker: the C{[access]} section of C{server.ini}.

MetaQ itself has no access control, and without an C{[access]} section
neither has this broker: anyone who reaches a listener may publish, consume,
reset the statistics and complete anybody's XA branches. With the section,
everything not granted there is refused.

A connection is known by its L{Principal}: the client's IP address and, on a
TLS listener that verifies client certificates, the common name of the
certificate it presented. Each grant lists who gets it, as comma-separated
entries:

  - C{*}: anyone;
  - an IP address or network: C{10.1.0.0/16}, C{127.0.0.1}, C{::1};
  - C{cn=NAME}: a verified client certificate with that common name (C{*}
    in NAME matches any text);
  - C{cn=NAME@NETWORK}: both at once;
  - C{unix}: a connection over a UNIX socket listener.

The grants (C{publish.} and C{consume.} keys end in a topic pattern, C{*}
matching any text)::

    publish.orders-*  = 10.1.0.0/16, cn=order-service
    consume.orders-*  = 10.2.0.0/16
    admin             = 127.0.0.1, cn=ops
    transactions      = cn=transaction-manager
    replicate         = 10.0.0.6

C{admin} covers C{stats reset}, C{stats config} and the transaction
branches of other connections (L{AccessRules.mayAdmin} is also the check for
any operator command a future interface adds); C{transactions} covers just the
branches of other connections (for a transaction manager that recovers
after a crash); C{replicate} covers the C{sync} commands a sync master sends
its slave. C{stats} (other items) and C{version} stay open to everyone:
monitoring and client heartbeats need them.
"""

import ipaddress
import re
from dataclasses import dataclass, field
from functools import lru_cache

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger

from metamorphosis.protocol.commands import (
    GetCommand,
    OffsetCommand,
    PutCommand,
    ResultCommand,
    StatsCommand,
    SyncCommand,
)
from metamorphosis.protocol.status import UNAUTHORIZED
from metamorphosis.ratelog import DEFAULT_INTERVAL, RateLimitedLog

#: The C{stats} items that need the C{admin} right.
ADMIN_STATS_ITEMS = frozenset(["reset", "config"])

#: The kinds of grant besides the per-topic ones.
GLOBAL_GRANTS = ("admin", "transactions", "replicate")


class AccessDenied(Exception):
    """
    A request the access rules refuse; the message says what was refused.
    """


class AccessConfigError(ValueError):
    """
    An C{[access]} entry that cannot be used; the message says why.
    """


@dataclass(frozen=True)
class Principal:
    """
    Who is on the other end of a connection.

    @ivar address: the client's IP address (an L{ipaddress} address,
        IPv4-mapped IPv6 addresses as IPv4), or L{None} over a UNIX socket.
    @ivar certName: the common name of the client certificate the TLS
        listener verified, or L{None}.
    """

    address: object | None = None
    certName: str | None = None

    def __str__(self):
        where = "unix" if self.address is None else str(self.address)
        return where if self.certName is None else f"cn={self.certName}@{where}"


def principalOf(peer, transport=None):
    """
    The L{Principal} of a connection: its peer address and, from its
    transport, the verified TLS client certificate. Call it once the TLS
    handshake is over (when the first command arrives).
    """
    address = None
    if isinstance(peer, (IPv4Address, IPv6Address)):
        address = ipaddress.ip_address(peer.host.split("%")[0])
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
    certName = None
    if transport is not None and ISSLTransport.providedBy(transport):
        certificate = transport.getPeerCertificate()
        if certificate is not None:
            certName = certificate.get_subject().commonName
    return Principal(address, certName)


@lru_cache(maxsize=1024)
def _wildcard(pattern):
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")))


@dataclass(frozen=True)
class Grantee:
    """
    One entry of a grant: who it lets in.
    """

    anyone: bool = False
    unix: bool = False
    network: object | None = None
    certPattern: str | None = None

    @classmethod
    def parse(cls, text):
        text = text.strip()
        if text == "*":
            return cls(anyone=True)
        if text == "unix":
            return cls(unix=True)
        certPattern = None
        network = None
        if text.startswith("cn="):
            certPattern, _, where = text[len("cn="):].partition("@")
            if not certPattern:
                raise AccessConfigError(f"{text!r}: cn= without a name")
            text = where
        if text:
            try:
                network = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise AccessConfigError(
                    f"{text!r} is neither *, unix, an IP address or network, "
                    "nor cn=NAME[@NETWORK]"
                )
        return cls(network=network, certPattern=certPattern)

    def matches(self, principal):
        if self.anyone:
            return True
        if self.unix:
            return principal.address is None and principal.certName is None
        if self.certPattern is not None:
            if principal.certName is None or not _wildcard(self.certPattern).fullmatch(
                principal.certName
            ):
                return False
        if self.network is not None:
            address = principal.address
            return (
                address is not None
                and address.version == self.network.version
                and address in self.network
            )
        return True


def _grantees(key, value):
    entries = [entry for entry in value.split(",") if entry.strip()]
    if not entries:
        raise AccessConfigError(f"{key}: grants nobody (write the entries, or * for anyone)")
    return tuple(Grantee.parse(entry) for entry in entries)


@dataclass
class AccessRules:
    """
    The grants of the C{[access]} section; C{enabled} is false without the
    section, and then everything is allowed.

    @ivar publish: C{(topicPattern, grantees)} pairs in file order.
    @ivar consume: the same for consuming.
    @ivar grants: C{admin}, C{transactions} and C{replicate} to their
        grantees.
    """

    enabled: bool = False
    publish: list = field(default_factory=list)
    consume: list = field(default_factory=list)
    grants: dict = field(default_factory=dict)

    def _granted(self, grantees, principal):
        return any(grantee.matches(principal) for grantee in grantees)

    def _topicGranted(self, rules, principal, topic):
        return any(
            _wildcard(pattern).fullmatch(topic) and self._granted(grantees, principal)
            for pattern, grantees in rules
        )

    def mayPublish(self, principal, topic):
        return not self.enabled or self._topicGranted(self.publish, principal, topic)

    def mayConsume(self, principal, topic):
        return not self.enabled or self._topicGranted(self.consume, principal, topic)

    def mayAdmin(self, principal):
        return not self.enabled or self._granted(self.grants.get("admin", ()), principal)

    def mayTouchAnyTransaction(self, principal):
        return self.mayAdmin(principal) or self._granted(
            self.grants.get("transactions", ()), principal
        )

    def mayReplicate(self, principal):
        return not self.enabled or self._granted(self.grants.get("replicate", ()), principal)


def parseAccess(entries):
    """
    The L{AccessRules} of the C{[access]} section's C{(key, value)} pairs.

    @raise AccessConfigError: a key or an entry is not understood.
    """
    rules = AccessRules(enabled=True)
    for key, value in entries:
        kind, dot, pattern = key.partition(".")
        if kind in ("publish", "consume") and dot:
            if not pattern:
                raise AccessConfigError(f"{key}: no topic pattern after {kind}.")
            getattr(rules, kind).append((pattern, _grantees(key, value)))
        elif key in GLOBAL_GRANTS:
            rules.grants[key] = _grantees(key, value)
        else:
            raise AccessConfigError(
                f"{key}: unknown grant (expected publish.<topics>, consume.<topics>, "
                + ", ".join(GLOBAL_GRANTS) + ")"
            )
    return rules


class AccessGate:
    """
    The access checks of a running broker: which right a request needs,
    the refusal reply, and the denial log (one line per principal and right
    per interval, with the number of refusals not logged).

    @ivar rules: a callable returning the current L{AccessRules} (the
        configuration may be reloaded).
    """

    log = Logger()

    def __init__(self, rules, clock=None, logInterval=DEFAULT_INTERVAL):
        self.rules = rules
        self._denials = RateLimitedLog(self.log, logInterval, clock)

    def check(self, command, session):
        """
        The refusal of C{command} from C{session}, or L{None} when it is
        allowed. Transaction commands are checked branch by branch by the
        transaction processor (L{mayTouch}).
        """
        rules = self.rules()
        if not rules.enabled:
            return None
        principal = session.principal
        if isinstance(command, SyncCommand):
            if not rules.mayReplicate(principal):
                return self.refuse(session, "replicate", command.topic, command.opaque)
        elif isinstance(command, PutCommand):
            if not rules.mayPublish(principal, command.topic):
                return self.refuse(session, "publish", command.topic, command.opaque)
        elif isinstance(command, (GetCommand, OffsetCommand)):
            if not rules.mayConsume(principal, command.topic):
                return self.refuse(session, "consume", command.topic, command.opaque)
        elif isinstance(command, StatsCommand) and command.item in ADMIN_STATS_ITEMS:
            if not rules.mayAdmin(principal):
                return self.refuse(session, "admin", f"stats {command.item}", command.opaque)
        return None

    def mayTouch(self, session, owner):
        """
        Whether C{session} may act on an XA branch begun by C{owner} (a
        session, or L{None} for a branch recovered from the journal): its
        own branches, those of a closed connection of the same principal
        (a client recovering after a reconnection), and any with the
        C{transactions} or C{admin} right.
        """
        rules = self.rules()
        if not rules.enabled or owner is session:
            return True
        if owner is not None and owner.closed and owner.principal == session.principal:
            return True
        return rules.mayTouchAnyTransaction(session.principal)

    def refuse(self, session, right, what, opaque, xa=False):
        """
        The reply refusing C{right} on C{what} to C{session}, logged.

        @param xa: the reply goes to an XA operation, whose Java caller
            reads an C{XAException:code=} text (C{XAER_RMERR}, -3).
        """
        principal = session.principal
        self._denials.warn(f"access-{right}-{principal}",
                           "Access denied: {principal} may not {right} {what}",
                           principal=str(principal), right=right, what=what)
        text = f"Access denied: {principal} may not {right} {what}"
        if xa:
            text = f"XAException:code=-3,msg={text}"
        return ResultCommand(UNAUTHORIZED, text.encode("utf-8"), opaque)
