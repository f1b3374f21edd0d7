"""
The C{mtls:} server endpoint string: TLS with client certificates (see
L{metamorphosis.broker.listeners}).
"""

from metamorphosis.broker.listeners import MutualTLSServerParser

mtls = MutualTLSServerParser()
