"""
The C{metaq} plugin: C{twistd metaq} and C{twist metaq} run a MetaQ broker.
"""

from twisted.application.service import ServiceMaker

metaq = ServiceMaker(
    "MetaQ broker",
    "metamorphosis.broker.service",
    "A MetaQ (Metamorphosis 1.4.x) broker speaking the Java wire protocol.",
    "metaq",
)
