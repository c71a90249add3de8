"""Samples for the data-loss detectors: valid values made fresh from a seed (so no
credential-shaped string is stored in the repository), and near-misses that must not be
findings. Shared by the detector corpus (tests/test_dlp_detectors.py) and the end-to-end
tests through the proxy (tests/test_dlp_proxy.py)."""

from __future__ import annotations

import base64
import json
import random
import string
from collections.abc import Callable

ALNUM = string.ascii_letters + string.digits
B64URL = ALNUM + "-_"


def _r(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _mixed(rng: random.Random, alphabet: str, n: int) -> str:
    """Random, with at least one upper, lower and digit where the alphabet has them."""
    while True:
        s = _r(rng, alphabet, n)
        if all(any(c in s for c in group) for group in (string.ascii_uppercase,
               string.ascii_lowercase, string.digits) if any(c in alphabet for c in group)):  # fmt: skip
            return s


def _jwt(rng: random.Random) -> str:
    def b64(d: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")

    return ".".join([b64({"alg": "HS256", "typ": "JWT"}),
                     b64({"sub": _r(rng, ALNUM, 12), "iat": rng.randrange(10**9, 2 * 10**9)}),
                     _r(rng, B64URL, 43)])  # fmt: skip


def _private_key(rng: random.Random) -> str:
    body = base64.b64encode(rng.randbytes(192)).decode()
    lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return f"-----BEGIN RSA PRIVATE KEY-----\n{lines}\n-----END RSA PRIVATE KEY-----"


def _card(rng: random.Random) -> str:
    from stdnum import luhn

    prefix = rng.choice(["4", "51", "52", "53", "54", "55", "2221", "2720", "6011", "65"])
    body = prefix + _r(rng, string.digits, 15 - len(prefix))
    number = body + luhn.calc_check_digit(body)
    if rng.random() < 0.5:
        return " ".join(number[i : i + 4] for i in range(0, 16, 4))
    return number


def _amex(rng: random.Random) -> str:
    from stdnum import luhn

    body = rng.choice(["34", "37"]) + _r(rng, string.digits, 12)
    return body + luhn.calc_check_digit(body)


def _iban(rng: random.Random) -> str:
    from stdnum import iban

    country, bban = rng.choice([
        ("DE", _r(rng, string.digits, 18)),
        ("NL", _r(rng, string.ascii_uppercase, 4) + _r(rng, string.digits, 10)),
        ("FR", _r(rng, string.digits, 23)),
    ])  # fmt: skip
    number = country + "00" + bban
    number = country + iban.calc_check_digits(number) + bban
    if rng.random() < 0.5:
        return " ".join(number[i : i + 4] for i in range(0, len(number), 4))
    return number


def _ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}-{rng.randrange(1, 100):02d}-{rng.randrange(1, 10000):04d}"


def _dni(rng: random.Random) -> str:
    from stdnum.es import dni

    digits = _r(rng, string.digits, 8)
    return digits + dni.calc_check_digit(digits)


def _codice_fiscale(rng: random.Random) -> str:
    from stdnum.it import codicefiscale

    body = (_r(rng, string.ascii_uppercase, 6) + _r(rng, string.digits, 2)
            + rng.choice("ABCDEHLMPRST") + f"{rng.randrange(1, 29):02d}"
            + rng.choice("ABCDEFGHILM") + _r(rng, string.digits, 3))  # fmt: skip
    return body + codicefiscale.calc_check_digit(body)


def _nir(rng: random.Random) -> str:
    from stdnum.fr import nir

    body = (rng.choice("12") + _r(rng, string.digits, 2) + f"{rng.randrange(1, 13):02d}"
            + f"{rng.randrange(1, 96):02d}" + _r(rng, string.digits, 6))  # fmt: skip
    return body + nir.calc_check_digits(body)


def _aadhaar(rng: random.Random) -> str:
    from stdnum import verhoeff
    from stdnum.in_ import aadhaar

    while True:
        body = rng.choice("23456789") + _r(rng, string.digits, 10)
        number = body + verhoeff.calc_check_digit(body)
        if aadhaar.is_valid(number):
            return " ".join(number[i : i + 4] for i in range(0, 12, 4))


def _phone(rng: random.Random) -> str:
    import phonenumbers

    while True:
        region = rng.choice(["GB", "DE", "FR", "US", "IN", "ES"])
        example = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
        national = str(example.national_number)
        national = national[:-4] + _r(rng, string.digits, 4)
        number = phonenumbers.parse(f"+{example.country_code}{national}", None)
        if phonenumbers.is_valid_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)


def _email(rng: random.Random) -> str:
    first = rng.choice(["ana", "bob", "chen", "dmitri", "eve", "fatima", "li"])
    last = rng.choice(["garcia", "smith", "wang", "kumar", "okafor", "muller"])
    domain = rng.choice(["gmail.com", "outlook.com", "acme-corp.co.uk", "uni-bonn.de", "proton.me"])
    return f"{first}.{last}{rng.randrange(100)}@{domain}"


# detector -> a function making one valid value from a Random
VALID: dict[str, Callable[[random.Random], str]] = {
    "aws_access_key": lambda r: "AKIA" + _r(r, string.ascii_uppercase + "234567", 16),
    "github_token": lambda r: "ghp_" + _mixed(r, ALNUM, 36),
    "gitlab_token": lambda r: "glpat-" + _mixed(r, ALNUM, 20),
    "slack_token": lambda r: (
        f"xoxb-{_r(r, string.digits, 11)}-{_r(r, string.digits, 13)}-"
        + _mixed(r, string.ascii_lowercase + string.digits, 24)
    ),
    "stripe_key": lambda r: "sk_live_" + _mixed(r, ALNUM, 24),
    "openai_api_key": lambda r: "sk-proj-" + _mixed(r, B64URL, 56),
    "anthropic_api_key": lambda r: "sk-ant-api03-" + _mixed(r, B64URL, 95),
    "google_api_key": lambda r: "AIza" + _mixed(r, B64URL, 35),
    "huggingface_token": lambda r: "hf_" + _mixed(r, string.ascii_letters, 34),
    "sendgrid_key": lambda r: "SG." + _mixed(r, B64URL, 22) + "." + _mixed(r, B64URL, 43),
    "jwt": _jwt,
    "private_key": _private_key,
    "url_credentials": lambda r: f"postgres://app:{_mixed(r, ALNUM, 18)}@db.internal:5432/app",
    "secret_assignment": lambda r: f'client_secret = "{_mixed(r, ALNUM, 32)}"',
    "npm_token": lambda r: "//registry.npmjs.org/:_authToken=npm_" + _mixed(r, ALNUM, 36),
    "pypi_token": lambda r: "pypi-AgEIcHlwaS5vcmc" + _mixed(r, B64URL, 80),
    "azure_storage_key": lambda r: "AccountKey=" + base64.b64encode(r.randbytes(66)).decode(),
    "mailchimp_key": lambda r: _r(r, "0123456789abcdef", 32) + "-us12",
    "telegram_bot_token": lambda r: f"{r.randrange(10**8, 10**9)}:" + _mixed(r, B64URL, 35),
    "discord_bot_token": lambda r: (
        "M" + _mixed(r, ALNUM, 23) + "." + _mixed(r, ALNUM, 6) + "." + _mixed(r, ALNUM, 27)
    ),
    "square_oauth_secret": lambda r: "sq0csp-" + _mixed(r, ALNUM, 43),
    "email_address": _email,
    "phone_number": _phone,
    "payment_card": lambda r: _card(r) if r.random() < 0.8 else _amex(r),
    "iban": _iban,
    "us_ssn": _ssn,
    "es_dni": _dni,
    "it_codice_fiscale": _codice_fiscale,
    "fr_nir": _nir,
    "in_aadhaar": _aadhaar,
}


def _bad_check(value: str, rng: random.Random) -> str:
    """``value`` with its last digit changed: the checksum fails."""
    last = value[-1]
    choices = [d for d in string.digits if d != last] if last.isdigit() else [
        c for c in string.ascii_uppercase if c != last]  # fmt: skip
    return value[:-1] + rng.choice(choices)


# Near-misses: values that look like findings and are not (invalid check digits,
# documentation values, identifiers, code).
def near_misses(rng: random.Random) -> list[tuple[str, str]]:
    """(what, text) pairs that must produce no finding."""
    uuid = "-".join(_r(rng, "0123456789abcdef", n) for n in (8, 4, 4, 4, 12))
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + rng.randbytes(3000)).decode()
    out = [
        ("card, bad Luhn", _bad_check(_card(rng).replace(" ", ""), rng)),
        ("IBAN, bad check", _iban(rng).replace(" ", "")[:2] + "00" + _iban(rng).replace(" ", "")[4:]),
        ("SSN, area 000", f"000-{rng.randrange(10, 99)}-{rng.randrange(1000, 9999)}"),
        ("SSN, area 666", f"666-{rng.randrange(10, 99)}-{rng.randrange(1000, 9999)}"),
        ("SSN, area 9xx", f"9{rng.randrange(10, 99)}-{rng.randrange(10, 99)}-{rng.randrange(1000, 9999)}"),
        ("DNI, bad letter", _bad_check(_dni(rng), rng)),
        ("codice fiscale, bad check", _bad_check(_codice_fiscale(rng), rng)),
        ("NIR, bad key", _nir(rng)[:-2] + "00"),
        ("Aadhaar, bad Verhoeff", _bad_check(_aadhaar(rng).replace(" ", ""), rng)),
        ("UUID", uuid),
        ("git commit", _r(rng, "0123456789abcdef", 40)),
        ("sha256", "sha256:" + _r(rng, "0123456789abcdef", 64)),
        ("base64 image", f"data:image/png;base64,{png}"),
        ("AWS documentation key", "AKIAIOSFODNN7EXAMPLE"),
        ("AWS documentation secret", 'aws_secret_access_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"'),
        ("documentation e-mail", "write to jane.doe@example.com or admin@mail.example.org"),
        ("test card", "4111 1111 1111 1111 and 4242424242424242"),
        ("documentation IBAN", "GB82 WEST 1234 5698 7654 32"),
        ("token template", "ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"),
        ("env reference", "password = os.environ['DB_PASSWORD']"),
        ("secret reference", "token: ${{ secrets.GITHUB_TOKEN }}"),
        ("code testing for a key", "if line.startswith('-----BEGIN PRIVATE KEY-----'):"),
        ("placeholder text", 'api_key = "YOUR_API_KEY_HERE"'),
        ("URL with a documentation password", "postgres://user:password@localhost/db"),
        ("git remote", "git@github.com:acme/widgets.git"),
        ("npm version", "npm@10.2.3 and left-pad@1.3.0"),
        ("image name", "icon@2x.png"),
        ("timestamps", "2024-01-15T10:30:00Z 1700000000123 10:30:00"),
        ("version numbers", "1.2.3.4 v10.22.1 3.11.7"),
        ("order number", f"order {rng.randrange(10**9, 10**10)}"),
        ("IPv4 address", f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"),
        ("hex color and ids", "#ff00aa id=12345678 ts=20240115"),
        ("sequence", "abcdefghijklmnopqrstuvwxyz0123456789"),
        ("python identifier", "really_long_function_name_without_secrets = compute_value()"),
    ]  # fmt: skip
    return out
