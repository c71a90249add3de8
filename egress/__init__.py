"""egress: a credential-injecting egress proxy for sandboxed AI agents."""

__version__ = "0.1.0"
