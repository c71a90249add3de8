"""The detectors: what a finding can be, where its pattern comes from, how it is validated.

Credential shapes are detect-secrets' plugin patterns (Yelp, Apache-2.0: the catalogue
pre-commit hooks and CI scanners use, maintained upstream as vendors change formats),
read from the plugin classes at import, plus its JWT check and false-positive heuristics.
Its own scanner is not used inline: it runs every plugin over every line (0.22 MB/s
measured here); egress runs each pattern only where its literal prefix is present (one
Aho-Corasick pass for all of them, egress.dlp.scan). A few formats detect-secrets does not
know (Anthropic, fine-grained GitHub, Google, Hugging Face keys) are added from the
vendors' documented prefixes.

Personal data is matched loosely and then validated by maintained libraries, which is what
keeps false positives low: python-stdnum (Luhn for payment cards, ISO 13616 IBANs with the
country's length and format, national identifiers with their check digits), phonenumbers
(Google's libphonenumber metadata: a number must be valid for its region), and the Public
Suffix List for e-mail domains. Published documentation values (AWS's EXAMPLE keys, card
networks' test numbers, the IBAN registry's examples) are not findings.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from egress.hostnames import has_known_suffix

Kind = Literal["credential", "personal"]
# (value, the text it is in, start, end) -> is it a finding
Validator = Callable[[str, str, int, int], bool]


@dataclass(frozen=True)
class Detector:
    name: str  # stable: in 403s, audit records, metrics and config
    kind: Kind
    label: str  # the masking token's type: [EMAIL_1]
    patterns: tuple[re.Pattern[str], ...]
    # The pattern runs only where one of these is in the text (folded to lower case when
    # ``fold_case``); () runs it on every text.
    literals: tuple[str, ...]
    validate: Validator
    source: str  # where the pattern and the validation come from (docs/dlp.md)
    fold_case: bool = False
    # The group that is the value, where a pattern has no group named "value" (0: all of
    # the match; detect-secrets' patterns capture a prefix or the password of a URL).
    group: int = 0
    # Runs only near a run of 8+ digits (egress.dlp.scan finds those once per text): the
    # number-shaped detectors, which have no literal prefix to wait for.
    needs_digits: bool = False
    # (before, after): run only within this many characters of a literal's occurrence,
    # for a pattern that starts near its literal and whose literal is common ("key").
    near: tuple[int, int] | None = None

    def values(self, text: str) -> list[tuple[str, int, int]]:
        """(value, start, end) of every validated match in ``text``."""
        out: list[tuple[str, int, int]] = []
        for pattern in self.patterns:
            for m in pattern.finditer(text):
                group: int | str = "value" if "value" in pattern.groupindex else self.group
                value, start, end = m.group(group), m.start(group), m.end(group)
                try:
                    valid = self.validate(value, text, start, end)
                except Exception:  # noqa: BLE001 (a validator that fails: the match stands)
                    valid = True
                if value and valid:
                    out.append((value, start, end))
        return out


def _ascii(pattern: str) -> re.Pattern[str]:
    """\\d and \\w as ASCII only: a Unicode digit is folded to ASCII first (egress.dlp.fold),
    and python-stdnum raises on anything else."""
    return re.compile(pattern, re.ASCII)


# --- shared checks -----------------------------------------------------------------------

# Documentation and test values vendors publish so that nobody pastes a real one.
DOCUMENTATION_VALUES = frozenset(
    {
        # card networks' and payment processors' test numbers
        "4111111111111111", "4242424242424242", "4012888888881881", "4000056655665556",
        "5555555555554444", "5105105105105100", "5200828282828210", "2223003122003222",
        "378282246310005", "371449635398431", "378734493671000", "6011111111111117",
        "6011000990139424", "3056930009020004", "36227206271667", "3566002020360505",
        "6200000000000005",
        # the IBAN registry's and banks' examples
        "GB82WEST12345698765432", "DE89370400440532013000", "FR1420041010050500013M02606",
        "NL91ABNA0417164300", "ES9121000418450200051332", "IT60X0542811101000000123456",
        "CH9300762011623852957", "BE68539007547034",
        # national identifiers printed on specimen cards and in documentation
        "078051120", "219099999", "123456789", "RSSMRA85T10A562S", "12345678Z",
        # AWS's documentation keys
        "AKIAIOSFODNN7EXAMPLE", "AKIAI44QH8DHBEXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY",
    }
)  # fmt: skip
_PLACEHOLDER_WORDS = re.compile(
    r"example|sample|dummy|placeholder|changeme|your[_-]?|redacted|x{4,}|\*{3,}", re.IGNORECASE
)
_TEMPLATE = re.compile(r"<[A-Za-z_ -]+>|\$\{|\{\{|%\(")


def entropy(text: str) -> float:
    """Shannon entropy in bits per character."""
    if not text:
        return 0.0
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


def _heuristics() -> tuple[Callable[[str], bool], ...]:
    # detect-secrets' false-positive filters (sequential strings, UUIDs, templates).
    from detect_secrets.filters import heuristic

    return (heuristic.is_sequential_string, heuristic.is_potential_uuid,
            heuristic.is_templated_secret)  # fmt: skip


@functools.cache
def _filters() -> tuple[Callable[[str], bool], ...]:
    return _heuristics()


def _body(value: str) -> str:
    """What follows a format's prefix (ghp_, sk-proj-...)."""
    return value.split("_", 1)[-1] if "_" in value[:12] else value


def looks_made_up(value: str) -> bool:
    """A value written to show a format, not a credential: a published documentation
    value, a template, a placeholder word with nothing random besides, a sequence, a run of
    one character. A placeholder word next to 12+ random characters does not count: an
    agent could append "EXAMPLE" or "xxxx" to a real token to have it waved through."""
    if value in DOCUMENTATION_VALUES or _TEMPLATE.search(value):
        return True
    if _PLACEHOLDER_WORDS.search(value):
        rest = _body(_PLACEHOLDER_WORDS.sub("", value))
        if len(rest) < 12 or entropy(rest) < 3.0:
            return True
    body = _body(value)
    if len(body) >= 8 and entropy(body) < 2.5:
        return True
    return any(f(value) for f in _filters())


def credential_value(value: str, text: str, start: int, end: int) -> bool:
    return not looks_made_up(value)


def _word_bounded(text: str, start: int, end: int) -> bool:
    """Not in the middle of a longer token of letters and digits."""
    before = text[start - 1] if start else " "
    after = text[end] if end < len(text) else " "
    return not (before.isalnum() or after.isalnum())


# --- credentials ---------------------------------------------------------------------------

# detect-secrets plugin -> (egress name, token label, literal prefixes)
_DETECT_SECRETS: tuple[tuple[str, str, str, str, tuple[str, ...]], ...] = (
    ("aws", "AWSKeyDetector", "aws_access_key", "AWS_KEY",
     ("AKIA", "ASIA", "ABIA", "ACCA", "A3T", "aws")),
    ("azure_storage_key", "AzureStorageKeyDetector", "azure_storage_key", "AZURE_KEY",
     ("AccountKey=",)),
    ("basic_auth", "BasicAuthDetector", "url_credentials", "URL_PASSWORD", ("@",)),
    ("discord", "DiscordBotTokenDetector", "discord_bot_token", "DISCORD_TOKEN", ()),
    ("github_token", "GitHubTokenDetector", "github_token", "GITHUB_TOKEN",
     ("ghp_", "gho_", "ghu_", "ghs_", "ghr_")),
    ("gitlab_token", "GitLabTokenDetector", "gitlab_token", "GITLAB_TOKEN",
     ("glpat-", "gldt-", "glft-", "glsoat-", "glrt-", "GR1348941", "glcbt-", "glimt-",
      "glptt-", "glagent-", "gloas-")),
    ("jwt", "JwtTokenDetector", "jwt", "JWT", ("eyJ",)),
    ("mailchimp", "MailchimpDetector", "mailchimp_key", "MAILCHIMP_KEY", ("-us",)),
    ("openai", "OpenAIDetector", "openai_api_key", "OPENAI_KEY", ("T3BlbkFJ",)),
    ("pypi_token", "PypiTokenDetector", "pypi_token", "PYPI_TOKEN", ("pypi-Ag",)),
    ("sendgrid", "SendGridDetector", "sendgrid_key", "SENDGRID_KEY", ("SG.",)),
    ("slack", "SlackDetector", "slack_token", "SLACK_TOKEN", ("xox", "hooks.slack.com")),
    ("square_oauth", "SquareOAuthDetector", "square_oauth_secret", "SQUARE_SECRET",
     ("sq0csp-",)),
    ("stripe", "StripeDetector", "stripe_key", "STRIPE_KEY", ("k_live_",)),
    ("telegram_token", "TelegramBotTokenDetector", "telegram_bot_token", "TELEGRAM_TOKEN", ()),
)  # fmt: skip
# Left out: detect-secrets' Artifactory ("AP" + 9 characters), Twilio ("SK" + 32) and
# public-IP detectors match ordinary identifiers; its keyword and entropy plugins are
# replaced by secret_assignment below (the same heuristics, one pattern).


def _jwt(value: str, text: str, start: int, end: int) -> bool:
    from detect_secrets.plugins.jwt import JwtTokenDetector

    # A header and a payload that are JSON, a signature that is base64url.
    return value.count(".") >= 1 and JwtTokenDetector.is_formally_valid(value)


# Key material: 64 base64 characters in a row (a PEM line), searched in a bounded window
# after the header (no nested repetition: linear whatever the text).
_KEY_MATERIAL = re.compile(r"[A-Za-z0-9+/=]{64}")
_KEY_WINDOW = 600


def _private_key(value: str, text: str, start: int, end: int) -> bool:
    """A key's header followed by key material within a few lines (its encryption
    headers may come first): not a line of code that tests for one."""
    return _KEY_MATERIAL.search(text, end, end + _KEY_WINDOW) is not None


def _url_password(value: str, text: str, start: int, end: int) -> bool:
    return len(value) >= 4 and value.lower() not in ("password", "passwd", "pass", "secret",
                                                      "pwd", "token") and not looks_made_up(value)  # fmt: skip


def _telegram(value: str, text: str, start: int, end: int) -> bool:
    return _word_bounded(text, start, end) and not looks_made_up(value)


# A pattern of names, not a password (ruff S105).
_SECRET_NAME = "".join(
    (
        r"(?:api[_-]?key|apikey|secret|token|passw(?:or)?d|passwd|pwd|credentials?|auth[_-]?key",
        r"|private[_-]?key|access[_-]?key|client[_-]?secret)",
    )
)
# Where a name says a secret follows: fields.py gives such a name and its value to the
# detectors together (name=value), the context secret_assignment needs.
SECRET_NAME = re.compile(_SECRET_NAME, re.IGNORECASE)
_SECRET_ASSIGNMENT = re.compile(
    r"(?i)" + _SECRET_NAME + r"[A-Za-z0-9_.-]{0,20}[\"']?\s{0,4}(?::|=|=>|:=)"
    r"\s{0,4}[\"']?(?P<value>[A-Za-z0-9+/_.~=-]{20,256})"
)
# A dotted name (self.backend.list_groups) is code, not a secret.
_DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")


def _assigned_secret(value: str, text: str, start: int, end: int) -> bool:
    """A value assigned to a key-like name that looks random: letters and digits mixed,
    high entropy, not a format's example."""
    stripped = value.strip("=")
    has_digit = any(c.isdigit() for c in stripped)
    has_alpha = any(c.isalpha() for c in stripped)
    return (
        has_digit
        and has_alpha
        and entropy(stripped) >= 3.5
        and not looks_made_up(stripped)
        and not stripped.replace(".", "").replace("-", "").isdigit()
        and not _DOTTED_NAME.fullmatch(stripped)
        and not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", stripped)  # commit and blob hashes
    )


_EXTRA_CREDENTIALS: tuple[tuple[str, str, str, tuple[str, ...], Validator], ...] = (
    ("anthropic_api_key", "ANTHROPIC_KEY", r"sk-ant-(?:api|admin)\d\d-[A-Za-z0-9_-]{80,120}",
     ("sk-ant-",), credential_value),
    ("openai_api_key", "OPENAI_KEY", r"sk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{40,200}",
     ("sk-proj-", "sk-svcacct-", "sk-admin-"), credential_value),
    ("github_token", "GITHUB_TOKEN", r"github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59}",
     ("github_pat_",), credential_value),
    ("google_api_key", "GOOGLE_KEY", r"AIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])", ("AIza",),
     credential_value),
    # detect-secrets' npm pattern takes the rest of the line (``npm_.+``) as the token.
    ("npm_token", "NPM_TOKEN", r"(?<![A-Za-z0-9])npm_[A-Za-z0-9]{36}(?![A-Za-z0-9])", ("npm_",),
     credential_value),
    # detect-secrets' URL pattern stops at sub-delimiters ('*', '!', '$'...), which a
    # client takes in a password as written: this one takes anything up to the '@'.
    ("url_credentials", "URL_PASSWORD",
     r"\b[a-zA-Z][a-zA-Z0-9+.-]{1,20}://[^\s:/?#@\"'<>]{1,64}:(?P<value>[^\s/?#@\"'<>]{3,128})@",
     ("://",), _url_password),
    # npm's legacy tokens are UUIDs: a secret only as the value of .npmrc's _authToken.
    ("npm_token", "NPM_TOKEN", r":_authToken=\s*(?P<value>[A-Fa-f0-9]{8}(?:-[A-Fa-f0-9]{4}){3}-[A-Fa-f0-9]{12})\b",
     (":_authToken",), lambda value, text, start, end: True),
    ("huggingface_token", "HF_TOKEN", r"hf_[A-Za-z]{34}(?![A-Za-z0-9])", ("hf_",),
     credential_value),
    ("private_key", "PRIVATE_KEY",
     r"BEGIN (?:RSA |DSA |EC |OPENSSH |ENCRYPTED |SSH2 ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?",
     ("PRIVATE KEY",), _private_key),
    ("secret_assignment", "SECRET", _SECRET_ASSIGNMENT.pattern,
     ("key", "secret", "token", "pass", "pwd", "credential"), _assigned_secret),
)  # fmt: skip


def _credential_detectors() -> list[Detector]:
    import importlib

    out: list[Detector] = []
    validators: dict[str, Validator] = {
        "jwt": _jwt, "url_credentials": _url_password, "telegram_bot_token": _telegram,
    }  # fmt: skip
    for module, cls, name, label, literals in _DETECT_SECRETS:
        plugin = getattr(importlib.import_module(f"detect_secrets.plugins.{module}"), cls)
        patterns = tuple(plugin.denylist)
        if name == "aws_access_key":
            # Its second pattern (a 40-character value near "aws") is secret_assignment's.
            patterns = patterns[:1]
        out.append(Detector(name, "credential", label, patterns, literals,
                            validators.get(name, credential_value),
                            f"detect-secrets {cls}",
                            group=1 if name == "url_credentials" else 0,
                            needs_digits=name == "telegram_bot_token"))  # fmt: skip
    for name, label, pattern, literals, validate in _EXTRA_CREDENTIALS:
        fold = name == "secret_assignment"
        out.append(Detector(name, "credential", label, (re.compile(pattern),), literals,
                            validate, "egress (vendor-documented prefix)" if not fold
                            else "egress (detect-secrets heuristics and entropy)",
                            fold_case=fold,
                            # its name starts up to 13 before the literal; the whole match
                            # (name, 20 more, the operator, 256 of value) fits in 340
                            near=(48, 340) if fold else None))  # fmt: skip
    return out


# --- personal data --------------------------------------------------------------------------

_EMAIL = _ascii(
    r"(?<![A-Za-z0-9._%+-])([A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,62}[A-Za-z0-9_%+-])?"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63})(?![A-Za-z0-9-])"
)
_RESERVED_DOMAINS = ("example.com", "example.org", "example.net", "example.edu")
_SERVICE_LOCALS = ("git", "noreply", "no-reply", "donotreply", "do-not-reply", "mailer-daemon")


def _email(value: str, text: str, start: int, end: int) -> bool:
    local, _, domain = value.rpartition("@")
    domain = domain.lower()
    if domain in _RESERVED_DOMAINS or domain.endswith(tuple("." + d for d in _RESERVED_DOMAINS)):
        return False
    if local.lower() in _SERVICE_LOCALS or local.lower().endswith("noreply"):
        return False
    return has_known_suffix(domain)


# Not a run inside a longer one: no letter, digit, dot or dash next to it, and no group of
# digits before or after it across a space (an IBAN or an account number printed in groups).
_CARD = re.compile(
    r"(?<![\w.])(?<!\w-)([0-9]{13,19})(?![\w-])"  # bare: only its own neighbours count
    r"|(?<![\w.-])(?<![0-9] )([0-9]{4}(?:[ ./-][0-9]{2,6}){2,4})(?![\w-])(?! [0-9])",
    re.ASCII,
)
# Issuer prefixes (ISO/IEC 7812 ranges of the card networks) and lengths.
_CARD_PREFIX = re.compile(
    r"4\d{12}(?:\d{3}){0,2}|5[1-5]\d{14}|2(?:2[2-9][1-9]|2[3-9]\d|[3-6]\d\d|7[01]\d|720)\d{12}"
    r"|3[47]\d{13}|6(?:011|5\d\d|4[4-9]\d)\d{12,15}|35(?:2[89]|[3-8]\d)\d{12,15}"
    r"|3(?:0[0-5]|[68]\d)\d{11,16}|62\d{14,17}"
)


def _card(value: str, text: str, start: int, end: int) -> bool:
    from stdnum import luhn

    digits = re.sub(r"[ ./-]", "", value)
    seps = {c for c in value if not c.isdigit()}
    if len(seps) > 1:
        return False
    if seps:  # grouped as printed: 4-4-4-4, 4-6-5 or 4-4-4-4-3
        groups = [len(g) for g in re.split(r"[ ./-]", value)]
        if groups not in ([4, 4, 4, 4], [4, 6, 5], [4, 6, 4], [4, 4, 4, 4, 3], [4, 4, 4, 2]):
            return False
    return (
        _CARD_PREFIX.fullmatch(digits) is not None
        and len(set(digits)) > 2
        and digits not in DOCUMENTATION_VALUES
        and luhn.is_valid(digits)
    )


_IBAN = _ascii(
    r"(?<![A-Za-z0-9])([A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?)(?![A-Za-z0-9])"
)


def _iban(value: str, text: str, start: int, end: int) -> bool:
    from stdnum import iban

    compact = value.replace(" ", "")
    return compact not in DOCUMENTATION_VALUES and iban.is_valid(compact)


_SSN = _ascii(r"(?<![\d-])(\d{3}-\d{2}-\d{4}|\d{3} \d{2} \d{4})(?![\d-])")
_SSN_BARE = _ascii(r"(?i)(?:ssn|social.security)[^0-9\n]{0,24}(?<!\d)(?P<value>\d{9})(?!\d)")


def _ssn(value: str, text: str, start: int, end: int) -> bool:
    from stdnum.us import ssn

    digits = value.replace("-", "").replace(" ", "")
    # stdnum refuses areas 000, 666 and 900-999, group 00, serial 0000 and the numbers the
    # SSA withdrew after they were published.
    return digits not in DOCUMENTATION_VALUES and ssn.is_valid(digits)


_DNI = _ascii(r"(?<![A-Za-z0-9])(\d{8}-?[A-Z])(?![A-Za-z0-9])")


def _dni(value: str, text: str, start: int, end: int) -> bool:
    from stdnum.es import dni

    compact = value.replace("-", "")
    return compact not in DOCUMENTATION_VALUES and dni.is_valid(compact)


_CODICE_FISCALE = _ascii(r"(?<![A-Za-z0-9])([A-Z]{6}[0-9LMNPQRSTUV]{2}[ABCDEHLMPRST]"
                             r"[0-9LMNPQRSTUV]{2}[A-Z][0-9LMNPQRSTUV]{3}[A-Z])(?![A-Za-z0-9])")  # fmt: skip


def _codice_fiscale(value: str, text: str, start: int, end: int) -> bool:
    from stdnum.it import codicefiscale

    return value not in DOCUMENTATION_VALUES and codicefiscale.is_valid(value)


_NIR = _ascii(r"(?<![\d])([12] ?\d\d ?(?:0[1-9]|1[0-2]|[2-9]\d) ?(?:\d\d|2[AB]) ?\d{3} ?\d{3}"
                  r" ?\d\d)(?![\d])")  # fmt: skip


def _nir(value: str, text: str, start: int, end: int) -> bool:
    from stdnum.fr import nir

    return nir.is_valid(value.replace(" ", ""))


_AADHAAR = _ascii(
    r"(?<![\w.-])(?<!\d )([2-9]\d{3} \d{4} \d{4}|[2-9]\d{3}-\d{4}-\d{4})(?![\w-])(?! \d)"
)
_AADHAAR_BARE = _ascii(
    r"(?i)(?:aadhaar|aadhar|uidai)[^0-9\n]{0,24}(?<!\d)(?P<value>[2-9]\d{11})(?!\d)"
)


def _aadhaar(value: str, text: str, start: int, end: int) -> bool:
    from stdnum.in_ import aadhaar

    return aadhaar.is_valid(value.replace(" ", "").replace("-", ""))


_PHONE_CANDIDATE = _ascii(r"(?<![\w+.-])(\+?\(?\d[\d ().-]{6,18}\d)(?![\w-])")


@functools.cache
def phone_validator(regions: tuple[str, ...]) -> Validator:
    """Numbers in international form (+CC) are checked against their country's numbering
    plan; national forms only for ``regions`` (ISO 3166 codes), where a string of digits is
    far more often an order number or a timestamp than a phone number."""

    def validate(value: str, text: str, start: int, end: int) -> bool:
        import phonenumbers

        digits = sum(c.isdigit() for c in value)
        if digits < 8 or digits > 15:
            return False
        # A date or a time is not a phone number: 2024-01-15, 10:30:00, 1.2.3.4.
        if re.fullmatch(r"\d{4}-\d\d-\d\d|\d\d?[./-]\d\d?[./-]\d{2,4}|[\d.]+", value.strip()):
            return False
        tries = ("ZZ",) if value.startswith("+") else regions
        for region in tries:
            try:
                number = phonenumbers.parse(value, region)
            except phonenumbers.NumberParseException:
                continue
            if phonenumbers.is_valid_number(number):
                return True
        return False

    return validate


def personal_detectors(phone_regions: tuple[str, ...] = ()) -> list[Detector]:
    def number(name: str, label: str, patterns: tuple[re.Pattern[str], ...], validate: Validator,
               source: str) -> Detector:  # fmt: skip
        return Detector(name, "personal", label, patterns, (), validate, source, needs_digits=True)

    def keyword(name: str, label: str, pattern: re.Pattern[str], words: tuple[str, ...],
                validate: Validator, source: str) -> Detector:  # fmt: skip
        return Detector(
            name, "personal", label, (pattern,), words, validate, source, fold_case=True
        )

    return [
        Detector("email_address", "personal", "EMAIL", (_EMAIL,), ("@",), _email,
                 "egress pattern; Public Suffix List (publicsuffixlist)"),
        number("phone_number", "PHONE", (_PHONE_CANDIDATE,), phone_validator(phone_regions),
               "phonenumbers (libphonenumber metadata)"),
        number("payment_card", "CARD", (_CARD,), _card, "python-stdnum luhn; ISO/IEC 7812 issuer ranges"),
        number("iban", "IBAN", (_IBAN,), _iban, "python-stdnum iban"),
        number("us_ssn", "SSN", (_SSN,), _ssn, "python-stdnum us.ssn"),
        keyword("us_ssn", "SSN", _SSN_BARE, ("ssn", "social"), _ssn, "python-stdnum us.ssn"),
        number("es_dni", "DNI", (_DNI,), _dni, "python-stdnum es.dni"),
        Detector("it_codice_fiscale", "personal", "CODICE_FISCALE", (_CODICE_FISCALE,), (),
                 _codice_fiscale, "python-stdnum it.codicefiscale"),
        number("fr_nir", "NIR", (_NIR,), _nir, "python-stdnum fr.nir"),
        number("in_aadhaar", "AADHAAR", (_AADHAAR,), _aadhaar, "python-stdnum in_.aadhaar (Verhoeff)"),
        keyword("in_aadhaar", "AADHAAR", _AADHAAR_BARE, ("aadhaar", "aadhar", "uidai"), _aadhaar,
                "python-stdnum in_.aadhaar (Verhoeff)"),
    ]  # fmt: skip


@functools.cache
def catalogue(phone_regions: tuple[str, ...] = ()) -> tuple[Detector, ...]:
    """Every detector, in a stable order."""
    return tuple(_credential_detectors() + personal_detectors(phone_regions))


def detector_names() -> tuple[str, ...]:
    return tuple(dict.fromkeys(d.name for d in catalogue()))


GROUPS = {"credentials": "credential", "personal": "personal"}
