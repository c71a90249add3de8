"""The ``tripwires:`` block: canary credentials and what a leak attempt triggers
(docs/tripwires.md)."""

from __future__ import annotations

import re
from typing import Any

from egress.config.checker import Checker
from egress.tripwires import ACTIONS, TRIGGERS, Canary, TripwireConfig

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CANARY_VALUE = re.compile(r"[!-~]{16,512}")


def _canary(c: Checker, node: Any, i: int, names: set[str]) -> Canary | None:
    key = f"tripwires.canaries[{i}]"
    m = c.mapping(node, key, ("name", "value", "env"), ("name", "value"))
    if m is None or "name" not in m or "value" not in m:
        return None
    name = c.typed(m, key, "name", str, "")
    value = c.typed(m, key, "value", str, "")
    env = c.typed(m, key, "env", str, None)
    ok = True
    if name in names:
        c.err(f"{key}.name", f"{name!r} names another secret or canary: names must be unique")
        ok = False
    if not _CANARY_VALUE.fullmatch(value or ""):
        c.err(f"{key}.value", "must be 16 to 512 visible ASCII characters: a fake credential "
              "shaped like the real ones it imitates (AKIA..., ghp_...), never a working one")  # fmt: skip
        ok = False
    if env is not None and not _ENV_NAME.fullmatch(env):
        c.err(f"{key}.env", f"{env!r} is not an environment variable name")
        ok = False
    if not ok:
        return None
    names.add(name)
    return Canary(name, value, env)


def parse_tripwires(c: Checker, node: Any, secret_names: set[str],
                    placeholders: set[str]) -> TripwireConfig | None:  # fmt: skip
    if node is None:
        return None
    m = c.mapping(node, "tripwires", ("canaries", "triggers", "actions", "operator_token_sha256"))
    if m is None:
        return None
    canaries: list[Canary] = []
    raw = m.get("canaries") or []
    if not isinstance(raw, list):
        c.err("tripwires.canaries", "must be a list of canaries (name, value, env)")
        raw = []
    names = set(secret_names)
    for i, item in enumerate(raw):
        canary = _canary(c, item, i, names)
        if canary is None:
            continue
        if any(canary.value in p or p in canary.value for p in placeholders):
            c.err(f"tripwires.canaries[{i}].value", "contains, or is contained in, a secret's "
                  "placeholder: a canary must be a value no request ever sends rightly")  # fmt: skip
            continue
        canaries.append(canary)
    triggers = c.str_list(m, "tripwires", "triggers") or list(TRIGGERS)
    for j, t in enumerate(triggers):
        if t not in TRIGGERS:
            c.err(f"tripwires.triggers[{j}]", f"{t!r} is not one of {', '.join(TRIGGERS)}")
    actions = c.str_list(m, "tripwires", "actions") or list(ACTIONS)
    for j, a in enumerate(actions):
        if a not in ACTIONS:
            c.err(f"tripwires.actions[{j}]", f"{a!r} is not one of {', '.join(ACTIONS)}")
    if "canary" in triggers and not canaries and "canaries" in m:
        c.err("tripwires.canaries", "is empty: give at least one canary, or leave canaries out")
    token = c.typed(m, "tripwires", "operator_token_sha256", str, None)
    if token is not None and not re.fullmatch(r"[0-9a-f]{64}", token):
        c.err("tripwires.operator_token_sha256", "must be the SHA-256 of the operator's token in "
              "lower-case hex (64 characters): printf %s \"$TOKEN\" | sha256sum")  # fmt: skip
        token = None
    return TripwireConfig(tuple(canaries), frozenset(triggers), frozenset(actions), token)
