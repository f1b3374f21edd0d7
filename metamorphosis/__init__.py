"""
metamorphosis: a MetaQ (Metamorphosis 1.4.x) broker and client on Twisted.

Java MetaQ producers, consumers and slave brokers talk to this broker
unchanged: the wire protocol, the stored record layout, the byte offsets and
the ZooKeeper layout are those of the Java implementation.
"""

__version__ = "0.1.0"

#: The MetaQ release whose protocol we speak; the broker answers ``version``
#: with it and ``stats`` reports it.
METAQ_VERSION = "1.4.6.2"
