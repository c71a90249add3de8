"""Undoing the cheap evasions before matching: invisible characters, look-alike letters,
compatibility forms.

An agent told to slip a value past a filter can write ``AKIA\\u200bIOSF...`` (a zero-width
space inside), ``ghp_`` with a Cyrillic ``р``, or a card number in full-width or
Arabic-Indic digits. The folded text has every format character (Unicode category Cf:
zero-width spaces and joiners, soft hyphens, bidi controls, word joiners, tag characters)
and the other invisible default-ignorables (variation selectors, the combining grapheme
joiner, fillers) removed, every decimal digit read as ASCII, NFKC applied
(full-width and other compatibility forms become ASCII) and the Cyrillic and Greek
letters that look like Latin ones replaced by those (the Latin, Cyrillic and Greek
single-character entries of Unicode's confusables.txt, UTS #39). Folding is for matching
only: the request is never rewritten with folded text.
"""

from __future__ import annotations

import functools
import unicodedata

# Look-alikes from confusables.txt (UTS #39) whose target is one ASCII letter or digit.
_CONFUSABLES = {
    # Cyrillic
    "а": "a", "в": "B", "е": "e", "к": "k", "м": "M", "н": "H", "о": "o", "р": "p", "с": "c",
    "т": "T", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ј": "j", "ԁ": "d", "ԛ": "q", "ԝ": "w",
    "һ": "h", "ӏ": "l", "ɡ": "g", "ү": "y", "ѵ": "v", "ʏ": "Y",
    "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C",
    "Т": "T", "Х": "X", "Ѕ": "S", "І": "I", "Ј": "J", "Ԛ": "Q", "Ԝ": "W", "Ү": "Y", "Ғ": "F",
    "Ӏ": "I", "З": "3", "б": "6",
    # Greek
    "α": "a", "ο": "o", "ν": "v", "ρ": "p", "ι": "i", "κ": "k", "τ": "t", "υ": "u", "χ": "x",
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N",
    "Ο": "O", "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X",
    # Latin look-alikes outside ASCII that NFKC keeps
    "ı": "i", "ȷ": "j", "ℓ": "l", "ǀ": "l", "ᴀ": "A",
}  # fmt: skip
_TABLE = str.maketrans(_CONFUSABLES)


# Default-ignorable code points outside Cf that render as nothing (Unicode's
# DerivedCoreProperties): variation selectors, the combining grapheme joiner, Hangul and
# Mongolian fillers, and the Braille blank that looks like a space.
_IGNORABLE = [*range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0), *range(0x180B, 0x1810)] + [
    0x034F,
    0x115F,
    0x1160,
    0x3164,
    0xFFA0,
    0x2800,
    0x17B4,
    0x17B5,
]


@functools.cache
def _table() -> dict[int, str | None]:
    """Format characters and default ignorables removed; every decimal digit (Arabic-Indic,
    Devanagari, full-width...) read as its ASCII digit."""
    table: dict[int, str | None] = {}
    for cp in range(0x110000):
        ch = chr(cp)
        category = unicodedata.category(ch)
        if category == "Cf":
            table[cp] = None
        elif category == "Nd" and cp > 0x7F:
            table[cp] = str(unicodedata.digit(ch))
    table.update(dict.fromkeys(_IGNORABLE))
    return table


def fold(text: str) -> str:
    """``text`` as matched: format characters removed, NFKC, look-alikes replaced. The
    same object when ``text`` is ASCII (nearly always: one C-speed check)."""
    if text.isascii():
        return text
    text = text.translate(_table())
    text = unicodedata.normalize("NFKC", text)
    return text.translate(_TABLE)
