"""All egress addons, in order, for a plain mitmdump:

    mitmdump -s addons/egress_addons.py --set egress_config=config/egress.yaml --set confdir=<private dir>

Order matters: the agent is identified first, the allowlist decides next, injection only touches allowed requests, and
the audit addon records what the others decided.
"""

from egress.addons.audit import AuditLog
from egress.addons.dlp import DataLossGuard
from egress.addons.identity import AgentIdentity
from egress.addons.inject import SecretInjector, StaleTokens
from egress.addons.policy import Allowlist
from egress.addons.protocol import ProtocolGuard
from egress.addons.scrub import ResponseScrubber
from egress.addons.tls import EgressTls
from egress.addons.tripwire import Tripwires

addons = [
    EgressTls(),
    AgentIdentity(),
    Tripwires(),
    Allowlist(),
    ProtocolGuard(),
    DataLossGuard(),
    SecretInjector(),
    StaleTokens(),
    ResponseScrubber(),
    AuditLog(),
]
