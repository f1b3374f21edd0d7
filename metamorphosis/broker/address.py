"""
The address a broker publishes: C{meta://<host>:<port>}.

Clients find the broker by this URL in ZooKeeper, and the broker quotes it in
its error replies (docs/protocol.md), so both use L{brokerURL}.
Without a configured C{hostName} the host is the machine's first
non-loopback IPv4 address, else its first non-loopback IPv6 address, as Java
C{RemotingUtils.getLocalHost} chooses it.
"""

import ipaddress
import socket


def _interfaceAddresses():
    """
    The addresses of the machine's network interfaces, interfaces in index
    order; falls back to the addresses the host name resolves to.
    """
    addresses = []
    try:
        import fcntl
        import struct

        SIOCGIFADDR = 0x8915
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            for _, name in socket.if_nameindex():
                request = struct.pack("256s", name.encode()[:15])
                try:
                    reply = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, request)
                except OSError:
                    continue
                addresses.append(socket.inet_ntoa(reply[20:24]))
    except (ImportError, OSError):
        pass
    try:
        with open("/proc/net/if_inet6") as table:
            for line in table:
                raw = line.split()[0]
                addresses.append(
                    str(ipaddress.IPv6Address(bytes.fromhex(raw)))
                )
    except (OSError, ValueError):
        pass
    if not addresses:
        try:
            infos = socket.getaddrinfo(socket.gethostname(), None)
        except OSError:
            infos = []
        addresses = [info[4][0] for info in infos]
    return addresses


def localHost(addresses=None):
    """
    The host part of this machine's broker URL when no C{hostName} is
    configured.

    @param addresses: candidate address strings, in preference order; the
        machine's own interface addresses by default.
    """
    if addresses is None:
        addresses = _interfaceAddresses()
    usable = []
    for text in addresses:
        try:
            address = ipaddress.ip_address(text.split("%")[0])
        except ValueError:
            continue
        if address.is_loopback or address.is_link_local or address.is_unspecified:
            continue
        usable.append(address)
    for address in usable:
        if address.version == 4:
            return str(address)
    for address in usable:
        return "[%s]" % (address,)
    return "127.0.0.1"


def brokerURL(host, port):
    """
    C{meta://<host>:<port>}, an IPv6 literal in brackets (Java
    C{Broker.getZKString}).
    """
    if ":" in host and not host.startswith("["):
        host = "[%s]" % (host,)
    return "meta://%s:%d" % (host, port)
