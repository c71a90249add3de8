"""Running the detectors over a request's fields: findings, never values.

A finding names its detector, the field (``where``), the character offset in that field
when the value is there as sent, and how it was found (``as sent``, ``folded``, ``base64
at 12, percent-decoded``...). The matched value stays inside the ``Finding`` (masking needs
it) behind a redacted ``repr``, and ``to_dict`` — what the audit log, the 403 and the
metrics see — leaves it out.

Cost: one Aho-Corasick pass over each text for every detector's literal prefixes
(ahocorasick_rs), then only the patterns whose prefix is there, plus the few patterns that
have none (card numbers, phone numbers, national identifiers: digit patterns that fail
fast on text without digits). bench/ measures MB/s.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import quote, quote_plus

import ahocorasick_rs

from egress.dlp.catalogue import Detector, catalogue
from egress.dlp.fields import Field
from egress.dlp.finding import Finding
from egress.dlp.fold import fold
from egress.dlp.views import Budget, views

# Decoded views may produce up to this many characters per character of input (plus a
# floor), across a request's fields.
BUDGET_FACTOR = 8
BUDGET_FLOOR = 1 << 20


@dataclass
class ScanResult:
    findings: list[Finding]
    complete: bool  # False: some field was encoded deeper than egress decodes

    def __repr__(self) -> str:
        return f"ScanResult({len(self.findings)} findings, complete={self.complete})"


_DIGIT_RUN = re.compile(r"\d[\d ().-]{6,}\d")
# Around a run of digits: room for the longest number-shaped value (an IBAN, 34 characters
# with its spaces up to 42) and for the patterns' look-behind and look-ahead.
_MARGIN = 48


def digit_windows(text: str) -> list[tuple[int, str]]:
    """(start, text) of the parts of ``text`` around each run of 8+ digits (separators
    allowed), merged where they overlap: the only places a number-shaped value can be."""
    spans: list[list[int]] = []
    for m in _DIGIT_RUN.finditer(text):
        if sum(c.isdigit() for c in m.group()) < 8:
            continue
        start, end = max(0, m.start() - _MARGIN), m.end() + _MARGIN
        if spans and start <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])
    if len(spans) == 1 and spans[0][0] == 0 and spans[0][1] >= len(text):
        return [(0, text)]
    return [(a, text[a:b]) for a, b in spans]


def _near(text: str, positions: list[int], near: tuple[int, int]) -> list[tuple[int, str]]:
    """(start, text) of the parts of ``text`` around ``positions``, merged where they
    overlap (the whole text when they cover it)."""
    before, after = near
    spans: list[list[int]] = []
    for p in sorted(positions):
        a, b = max(0, p - before), p + after
        if spans and a <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], b)
        else:
            spans.append([a, b])
    return [(a, text[a:b]) for a, b in spans]


class Scanner:
    """The detectors and their prefilter, built once per configuration."""

    def __init__(self, detectors: Iterable[Detector] | None = None):
        self.detectors = tuple(detectors if detectors is not None else catalogue())
        self._always = tuple(
            i for i, d in enumerate(self.detectors) if not d.literals and not d.needs_digits
        )
        self._numeric = tuple(i for i, d in enumerate(self.detectors) if d.needs_digits)
        literals: dict[str, set[int]] = {}
        folded: dict[str, set[int]] = {}
        for i, d in enumerate(self.detectors):
            for lit in d.literals:
                (folded if d.fold_case else literals).setdefault(
                    lit.lower() if d.fold_case else lit, set()
                ).add(i)
        self._literals = list(literals)
        self._owners = [literals[k] for k in self._literals]
        self._folded = list(folded)
        self._folded_owners = [folded[k] for k in self._folded]
        # Over bytes: a body decoded with surrogateescape is not valid UTF-8 text.
        self._automaton = (
            ahocorasick_rs.BytesAhoCorasick([x.encode() for x in self._literals])
            if literals
            else None
        )
        self._automaton_folded = (
            ahocorasick_rs.BytesAhoCorasick([x.encode() for x in self._folded]) if folded else None
        )

    def __repr__(self) -> str:
        return f"Scanner({len(self.detectors)} detectors)"

    def _candidates(self, text: str) -> tuple[list[int], dict[int, list[int]]]:
        """The detectors whose literal is in ``text``, and for those that run near their
        literal (Detector.near), where it is (offsets in ``text`` when it is ASCII)."""
        run = set(self._always)
        where: dict[int, list[int]] = {}
        data = text.encode("utf-8", "surrogatepass")
        ascii_text = len(data) == len(text)
        if self._automaton is not None:
            for m in self._automaton.find_matches_as_indexes(data, overlapping=True):
                run |= self._owners[m[0]]
        if self._automaton_folded is not None:
            for m in self._automaton_folded.find_matches_as_indexes(data.lower(), overlapping=True):
                for i in self._folded_owners[m[0]]:
                    run.add(i)
                    if ascii_text and self.detectors[i].near is not None:
                        where.setdefault(i, []).append(m[1])
        if not ascii_text:
            where = {}
        return sorted(run), where

    def values(self, text: str) -> list[tuple[Detector, str, int]]:
        out: list[tuple[Detector, str, int]] = []
        run, where = self._candidates(text)
        for i in run:
            d = self.detectors[i]
            if d.near is not None and i in where:
                for base, window in _near(text, where[i], d.near):
                    out.extend((d, v, base + start) for v, start, _ in d.values(window))
                continue
            out.extend((d, value, start) for value, start, _ in d.values(text))
        if self._numeric:
            for base, window in digit_windows(text):
                for i in self._numeric:
                    d = self.detectors[i]
                    out.extend((d, v, base + start) for v, start, _ in d.values(window))
        return out

    def scan(
        self,
        fields: Iterable[Field],
        ignore: Callable[[str], bool] = lambda _: False,
        budget: Budget | None = None,
        neutral: Callable[[str], str] = lambda text: text,
    ) -> ScanResult:
        """Findings in ``fields``: ``ignore`` drops a value (a loaded secret's), ``neutral``
        blanks out what is never a finding (egress's placeholders) in each view, keeping
        its length."""
        fields = list(fields)
        if budget is None:
            total = sum(len(f.text) for f in fields)
            budget = Budget(BUDGET_FACTOR * total + BUDGET_FLOOR)
        found: dict[tuple[str, str, str], Finding] = {}
        for f in fields:
            if not f.text:
                continue
            for how, view in views(f.text, budget, f.plus) if f.decode else [("as sent", f.text)]:
                text = neutral(view)
                self._scan_text(f, how, text, ignore, found)
                folded = fold(text)
                if folded is not text and folded != text:
                    label = "folded" if how == "as sent" else f"{how}, folded"
                    self._scan_text(f, label, folded, ignore, found)
        return ScanResult(_unrepeated(list(found.values())), complete=not budget.exhausted)

    def _scan_text(
        self,
        f: Field,
        how: str,
        text: str,
        ignore: Callable[[str], bool],
        found: dict[tuple[str, str, str], Finding],
    ) -> None:
        for d, value, start in self.values(text):
            key = (d.name, value, f.surface)
            if key in found and (found[key].in_place or how != "as sent"):
                continue  # one finding per value and surface: the first field, as sent if it can
            if ignore(value):
                continue
            if d.name == "secret_assignment" and any(
                value in v or v in value for n, v, s in found if n != d.name and s == f.surface
            ):
                continue  # a value a specific detector named already
            if f.joined and any(n == d.name and (v in value or value in v) for n, v, _ in found):
                continue  # the join of fields made it from a value a field holds already
            found[key] = Finding(d.name, d.kind, d.label, f.where, f.surface, how,
                                 start if how == "as sent" else None, value)  # fmt: skip


def _unrepeated(findings: list[Finding]) -> list[Finding]:
    """The findings with no value in a location: a name the agent chose may hold one (a key
    that is a letters-only password), so any finding's value there is replaced."""
    values = sorted({f.value for f in findings if len(f.value) >= 4}, key=len, reverse=True)
    out: list[Finding] = []
    for f in findings:
        where = f.where
        for v in values:
            if v in where:
                where = where.replace(v, "[redacted]")
        out.append(f if where == f.where else dataclasses.replace(f, where=where))
    return out


class Masker:
    """The typed tokens of one request: the same value gets the same token
    (``[EMAIL_1]``), and the response can have them put back (``restore``)."""

    def __init__(self) -> None:
        self._tokens: dict[str, str] = {}
        self._counts: dict[str, int] = {}
        self._padded: dict[str, str] = {}  # a token padded to its value's length -> value

    def __repr__(self) -> str:
        return f"Masker({len(self._tokens)} values, <redacted>)"

    def __bool__(self) -> bool:
        return bool(self._tokens)

    def token(self, finding: Finding) -> str:
        tok = self._tokens.get(finding.value)
        if tok is None:
            n = self._counts[finding.label] = self._counts.get(finding.label, 0) + 1
            tok = self._tokens[finding.value] = f"[{finding.label}_{n}]"
        return tok

    def replace(
        self,
        data: bytes,
        findings: Iterable[Finding],
        in_url: bool = False,
        same_length: bool = False,
    ) -> bytes:
        """Each finding's value replaced by its token in ``data`` wherever it appears as
        written, JSON-escaped or percent-encoded. Whatever is not replaced here is found
        again when the caller scans the result, and blocked. ``same_length``: the token is
        padded to the length of what it replaces (``[EMAIL_1_______]``), for a body whose
        Content-Length was sent before it; a value shorter than its token is left (and so
        blocked)."""
        findings = list(findings)
        for finding in findings:  # tokens numbered in the order the values were found
            self.token(finding)
        for finding in sorted(findings, key=lambda x: -len(x.value)):
            tok = self.token(finding).encode()
            if in_url:  # '[' and ']' are not allowed in a path or query as they are
                tok = quote(tok, safe="").encode()
            v = finding.value
            for form in dict.fromkeys(
                (v, json.dumps(v)[1:-1], quote(v, safe=""), quote_plus(v), quote(v, safe="@"))
            ):
                raw = form.encode("utf-8", "surrogateescape")
                if same_length:
                    if len(raw) < len(tok) or raw not in data:
                        continue
                    padded = tok[:-1] + b"_" * (len(raw) - len(tok)) + b"]"
                    self._padded[padded.decode()] = v
                    data = data.replace(raw, padded)
                else:
                    data = data.replace(raw, tok)
        return data

    def restore(self, data: bytes, json_escaped: bool) -> tuple[bytes, int]:
        """The tokens in ``data`` replaced by their values (JSON-escaped for a JSON
        document); how many were."""
        count = 0
        pairs = [
            *((v, t) for v, t in self._tokens.items()),
            *((v, t) for t, v in self._padded.items()),
        ]
        for value, tok in sorted(pairs, key=lambda p: -len(p[1])):
            t = tok.encode()
            n = data.count(t)
            if n:
                text = json.dumps(value)[1:-1] if json_escaped else value
                data = data.replace(t, text.encode("utf-8", "surrogateescape"))
                count += n
        return data, count
