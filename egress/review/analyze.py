"""``review_config``: the whole review of one config (reach matrix and findings)."""

from __future__ import annotations

from egress.config import Config
from egress.review.findings import evaluate
from egress.review.model import Report
from egress.review.reach import host_entries, reach_entries


def review_config(cfg: Config) -> Report:
    reach = reach_entries(cfg)
    return Report(
        config=cfg.path,
        mode=cfg.mode,
        hosts=host_entries(cfg, reach),
        reach=reach,
        findings=evaluate(cfg, reach),
        secrets=[s.name for s in cfg.secrets],
    )
