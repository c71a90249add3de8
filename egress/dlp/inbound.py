"""Prompt injection aimed at the agent, in what comes back: flagged, or withheld.

A page, an issue comment or an API answer the agent reads can carry instructions meant
for it: to ignore what it was told, to run a command, to send data somewhere. egress
reads text responses (within ``limits.max_body_bytes``) for those shapes, after undoing
the cheap evasions (egress.dlp.fold: zero-width characters, look-alikes, full-width
forms), and names what it found by category:

- ``override``: an instruction to drop the agent's instructions ("ignore all previous
  instructions", "disregard the system prompt", "you are now ...", "new instructions:");
- ``extraction``: an instruction to reveal the agent's own instructions ("show your
  system prompt", "repeat the instructions you were given");
- ``jailbreak``: switching the agent's safeguards off ("DAN mode enabled", "disable all
  safety checks");
- ``role_marker``: chat-template markers that fake a system or user turn
  (``<|im_start|>system``, ``[INST]``, ``<system>``, ``### System:``);
- ``command``: an instruction to run something, or a download piped into a shell
  (``curl ... | sh``, "run the following command");
- ``exfiltration``: an instruction to send credentials, secrets, environment variables or
  files somewhere ("send your API key to", "post the contents of ~/.ssh to");
- ``hidden``: instructions hidden from a human reader (an HTML comment or a zero-width
  run around an ``override``).

A response is a finding when it holds an ``override``, ``extraction``, ``jailbreak``,
``role_marker`` or ``exfiltration``, or a ``command`` together with another category: a lone "run the
following command" is what installation guides say. The false-positive rate on ordinary
documentation and code is measured by tests/test_dlp_inbound.py and recorded in
docs/dlp.md; it is why ``report`` is the default action.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass

from egress.dlp.fold import fold

_FLAGS = re.IGNORECASE | re.ASCII
_PATTERNS: dict[str, tuple[re.Pattern[str], ...]] = {
    "override": (
        re.compile(r"\b(?:ignore|disregard|forget|override)\s+(?:all\s+|any\s+|the\s+|your\s+|every\s+|of\s+)*"
                   r"(?:previous|prior|above|preceding|earlier|original|system|initial|existing)"
                   r"(?:\s+(?:and|or|&)\s+(?:following|subsequent|later|above|below))?\s+"
                   r"(?:instructions?|directions?|prompts?|rules?|guidelines?)", _FLAGS),
        re.compile(r"(?:^|[.!:]\s*)(?:ignore|disregard)\s+(?:all\s+|everything\s+)?(?:above|the\s+above|that)\s+and\b", _FLAGS),
        re.compile(r"\b(?:ignore|disregard|forget)\s+(?:all\s+)?(?:the|your|any)\s+(?:previous\s+|prior\s+)?"
                   r"(?:instructions|directions|guidelines)\s+(?:above|before|given|you\s+(?:were|have\s+been)\s+given)\b"
                   r"|\b(?:ignore|disregard|forget)\s+(?:all\s+)?your\s+(?:previous\s+|prior\s+|original\s+)?"
                   r"(?:instructions|directions|guidelines|programming)\b", _FLAGS),
        re.compile(r"\b(?:ignore|disregard|forget)\s+(?:everything|all)\s+(?:you\s+(?:were|have\s+been)\s+told|"
                   r"(?:said|written)\s+(?:above|before))", _FLAGS),
        # [ \t]* after a line start, not \s*: a run of line breaks is not retried from each
        re.compile(r"(?:^|\n|[.!] )[ \t]*(?:here\s+are\s+(?:your\s+|the\s+)?)?(?:new|updated|real|actual|secret)\s+"
                   r"instructions?\s*(?:for\s+(?:the\s+)?(?:ai|assistant|agent|model|llm)\s*)?:", _FLAGS),
        re.compile(r"\byou\s+are\s+now\s+(?:a|an|in|the|no\s+longer)\b", _FLAGS),
        re.compile(r"\b(?:from\s+now\s+on|henceforth),?\s+you\s+(?:will|must|shall|are\s+to)\b", _FLAGS),
        re.compile(r"\b(?:ai|assistant|agent|llm|language\s+model|chatbot)s?\s*(?:reading\s+this|that\s+reads\s+this)\b"
                   r"[^.\n]{0,80}\b(?:must|should|will|are\s+instructed\s+to)\b", _FLAGS),
        re.compile(r"\bdo\s+not\s+(?:tell|inform|mention\s+(?:this\s+)?to)\s+the\s+user\b", _FLAGS),
    ),
    "extraction": (
        re.compile(r"\b(?:show|reveal|print|repeat|output|display|dump|leak|tell\s+me|give\s+me|send\s+me)\s+"
                   r"(?:me\s+)?(?:your|the)\s+(?:full\s+|complete\s+|entire\s+|initial\s+|original\s+|hidden\s+|"
                   r"secret\s+|exact\s+)*(?:system\s+(?:prompt|message|instructions)|initial\s+instructions|"
                   r"instructions\s+you\s+(?:were|have\s+been)\s+given)", _FLAGS),
        re.compile(r"\b(?:show|reveal|print|repeat|output|dump|leak|tell\s+me|give\s+me|send\s+me)\s+(?:me\s+)?"
                   r"your\s+(?:full\s+|complete\s+|entire\s+|hidden\s+|secret\s+|exact\s+)*(?:instructions|rules)\b",
                   _FLAGS),
        re.compile(r"\brepeat\s+(?:the\s+|all\s+)?(?:instructions|words|text)\s+(?:you\s+were\s+given\s+)?"
                   r"(?:at\s+the\s+beginning|above|before\s+this)", _FLAGS),
    ),
    "jailbreak": (
        # (Developer Mode is a Windows setting: not here.)
        re.compile(r"\b(?:DAN|jailbreak|god|unrestricted)\s+mode\s+(?:is\s+)?(?:now\s+)?"
                   r"(?:enabled|activated|on)\b|\b(?:enable|enter|activate|switch\s+to)\s+(?:DAN|"
                   r"jailbreak|god|admin|unrestricted)\s+mode\b", _FLAGS),
        re.compile(r"\b(?:disable|bypass|turn\s+off|ignore)\s+(?:all\s+|your\s+|the\s+|any\s+)*"
                   r"(?:safety\s+(?:filters|guidelines|measures|rules)|content\s+filters?|guardrails)", _FLAGS),
    ),
    "role_marker": (
        re.compile(r"<\|im_start\|>\s*(?:system|assistant)|<\|(?:system|assistant)\|>", _FLAGS),
        re.compile(r"\[/?INST\]|<<SYS>>", re.ASCII),  # Llama's markers, as written
        re.compile(r"(?:^|\n)[ \t]*###[ \t]*(?:system|assistant)\b|(?:^|\n)[ \t]*(?:system|assistant)[ \t]+"
                   r"(?:prompt|message|instructions?)[ \t]*:", _FLAGS),
        # A fake system turn in tags, closed: not a <system> placeholder in a changelog.
        re.compile(r"<(system|system_prompt|admin_instructions)>[^<]{8,2000}</\1>", re.ASCII),
    ),
    "command": (
        re.compile(r"\b(?:curl|wget)\b[^\n|;]{1,200}\|\s*(?:sudo\s+)?(?:ba|z|da)?sh\b", _FLAGS),
        re.compile(r"\bbase64\s+(?:-d|--decode)\b[^\n]{0,40}\|\s*(?:ba)?sh\b", _FLAGS),
        re.compile(r"\b(?:run|execute|exec)\s+(?:the\s+following|this|these)\s+(?:shell\s+)?(?:commands?|scripts?|code)\b", _FLAGS),
        re.compile(r"\brm\s+-rf\s+(?:/|~|\$HOME)(?:\s|$)", _FLAGS),
    ),
    "exfiltration": (
        re.compile(r"\b(?:send|post|upload|email|forward|transmit|exfiltrate|leak|paste|include)\s+"
                   r"(?:me\s+|us\s+)?(?:all\s+|the\s+|your\s+|any\s+|its\s+)*(?:contents?\s+of\s+(?:the\s+|your\s+)?)?"
                   r"(?:api[\s_-]?keys?|credentials?|secrets?|tokens?|passwords?|private\s+keys?|ssh\s+keys?|"
                   r"env(?:ironment)?\s+variables?|\.env\b|~/\.ssh|~/\.aws|aws\s+credentials|cookies?|session)"
                   # ... to a place the instruction names: a URL, an address, "this webhook"
                   r"[^.\n]{0,80}\b(?:to|into|at|via)\s+(?:https?://|[\w.+-]+@[\w-]+\.\w|(?:this|my|our|the\s+following)\s+"
                   r"(?:url|server|endpoint|webhook|address|site|email|link))", _FLAGS),
        re.compile(r"\b(?:printenv|env|cat\s+~/\.(?:ssh|aws)\S*)\s*\|\s*(?:curl|nc|wget)\b", _FLAGS),
        re.compile(r"\b(?:curl|wget)\b[^\n]{0,200}(?:\$\{?[A-Z_]*(?:KEY|TOKEN|SECRET|PASSWORD)[A-Z_]*\}?|\$\(\s*(?:cat|env|printenv))",
                   re.ASCII),
    ),
}  # fmt: skip
_COMMENT_MAX = 2000
_STRONG = frozenset({"override", "role_marker", "exfiltration", "extraction", "jailbreak"})


@dataclass(frozen=True)
class InboundFinding:
    categories: tuple[str, ...]
    offset: int  # of the first match, in the folded text

    def to_dict(self) -> dict[str, object]:
        return {"detector": "prompt_injection", "where": "response body", "offset": self.offset,
                "how": ", ".join(self.categories)}  # fmt: skip


def _comments(text: str) -> list[tuple[int, str]]:
    """(start, text) of each HTML comment, at most _COMMENT_MAX long: str.find, linear in
    the text however many '<!--' it holds."""
    out: list[tuple[int, str]] = []
    at = text.find("<!--")
    while at >= 0 and len(out) < 1000:
        end = text.find("-->", at + 4, at + 4 + _COMMENT_MAX)
        if end >= 0:
            out.append((at, text[at + 4 : end]))
            at = text.find("<!--", end + 3)
        else:
            at = text.find("<!--", at + 4)
    return out


_MARKUP = re.compile(r"[*_`~]+")


def _readings(text: str) -> list[str]:
    """``text`` as a reader sees it: folded; HTML entities undone; a JSON document's string
    values (escapes undone), one per line; emphasis and underscores read as spaces."""
    out = [text]
    if "&" in text:
        out.append(html.unescape(text))
    stripped = text.lstrip()[:1]
    if stripped in ("{", "[") and ("\\" in text or '"' in text):
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError):
            doc = None
        if doc is not None:
            strings: list[str] = []
            stack = [doc]
            while stack and len(strings) < 100_000:
                node = stack.pop()
                if isinstance(node, str):
                    strings.append(node)
                elif isinstance(node, dict):
                    stack.extend(node.values())
                elif isinstance(node, list):
                    stack.extend(node)
            out.append("\n".join(reversed(strings)))
    folded = [fold(t) for t in out]
    return folded + [_MARKUP.sub(" ", t) for t in folded if _MARKUP.search(t)]


def inspect(text: str) -> InboundFinding | None:
    """The prompt-injection finding in ``text``, or None."""
    for reading in _readings(text):
        found = _inspect(reading)
        if found is not None:
            return found
    return None


def _inspect(folded: str) -> InboundFinding | None:
    hits: dict[str, int] = {}
    for category, patterns in _PATTERNS.items():
        for p in patterns:
            m = p.search(folded)
            if m is not None:
                hits[category] = min(hits.get(category, m.start()), m.start())
    for start, comment in _comments(folded):
        if any(p.search(comment) for p in _PATTERNS["override"] + _PATTERNS["exfiltration"]):
            hits.setdefault("hidden", start)
            break
    if not hits:
        return None
    strong = _STRONG & hits.keys()
    if not strong and len(hits) < 2:
        return None
    ordered = tuple(sorted(hits, key=hits.__getitem__))
    return InboundFinding(ordered, min(hits.values()))


TEXT_MEDIA = ("text/", "application/json", "application/xml", "application/javascript",
              "application/x-javascript", "application/xhtml", "application/ld+json",
              "application/markdown", "application/x-yaml", "application/yaml")  # fmt: skip


def is_text(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media.startswith(TEXT_MEDIA) or media.endswith(("+json", "+xml"))
