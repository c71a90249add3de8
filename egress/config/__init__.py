"""The egress config file: schema, validation and the typed objects the rest of egress uses.

- ``model``: the typed objects (``Config``, ``Rule``, ``SecretSpec``...);
- ``checker``: walking parsed YAML and recording problems with key paths;
- ``rules``, ``secret_specs``, ``vault_spec``: one section each;
- ``includes``: fragments and presets merged in, and where each key came from;
- ``load``: the top level (listen, ca, upstream, audit, limits...) and file loading.
"""

from egress.config.load import TOP_KEYS, load, load_default, load_or_default, parse
from egress.config.model import (
    DEFAULT_PORTS,
    EMBEDDED_DEFAULT,
    K8S_TOKEN_FILE,
    SCHEMES,
    SURFACES,
    VAULT_AUTH_METHODS,
    VAULT_ENGINES,
    AdminConfig,
    CaPki,
    Config,
    Limits,
    ListenTls,
    Origin,
    ReloadConfig,
    Rule,
    SecretSpec,
    SourceSpec,
    VaultAuth,
    VaultConfig,
    auto_placeholder,
    default_placeholder,
)

__all__ = [
    "DEFAULT_PORTS", "EMBEDDED_DEFAULT", "K8S_TOKEN_FILE", "SCHEMES", "SURFACES", "TOP_KEYS",
    "VAULT_AUTH_METHODS", "VAULT_ENGINES", "AdminConfig", "CaPki", "Config", "Limits", "ListenTls", "Origin", "ReloadConfig", "Rule",
    "SecretSpec", "SourceSpec", "VaultAuth", "VaultConfig", "auto_placeholder",
    "default_placeholder", "load", "load_default", "load_or_default", "parse",
]  # fmt: skip
