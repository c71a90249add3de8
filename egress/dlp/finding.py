"""A finding: which detector, where, how; the value only behind a redacted ``repr``."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Finding:
    detector: str
    kind: str
    label: str
    where: str
    surface: str
    how: str
    offset: int | None  # in the field's text, when found as sent
    value: str = field(repr=False, compare=False)

    def __repr__(self) -> str:
        return f"Finding({self.detector!r} in {self.where!r}, {self.how}, <redacted>)"

    @property
    def in_place(self) -> bool:
        """Found as sent in one field: masking can replace it where it is."""
        return self.how == "as sent"

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"detector": self.detector, "where": self.where}
        if self.offset is not None:
            d["offset"] = self.offset
        if self.how != "as sent":
            d["how"] = self.how
        return d
