"""The pure part of the harness: parsing client output, medians, ratios, tables, JSON.

Nothing here starts a process; tests/test_bench.py runs all of it on made-up figures.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

REFERENCES = ("direct", "mitmdump", "core")

# Figure keys: "<proto>.c<N>.<metric>" for the load runs, "<group>.<metric>" for the rest.
LOAD_METRICS = ("rps", "p50_ms", "p99_ms", "cpu_ms_per_req")
OTHER_FIGURES = (
    "newconn.per_s",
    "newconn.cpu_ms_per_conn",
    "stream.mib_s",
    "stream.peak_rss_mib",
    "sse.first_event_ms",
    "sse.added_ms",
    "idle.rss_start_mib",
    "idle.conn_kib_each",
    "idle.served",
    "idle.rss_before_conns_mib",
    "idle.rss_after_close_mib",
    "idle.after_close_ratio",
    "startup.ready_s",
    "vault.calls_per_req",
)

LABELS = {
    "rps": "req/s",
    "p50_ms": "p50 ms",
    "p99_ms": "p99 ms",
    "cpu_ms_per_req": "proxy CPU ms/req",
    "newconn.per_s": "new TLS conns/s (h1, c=8)",
    "newconn.cpu_ms_per_conn": "proxy CPU ms/new conn",
    "stream.mib_s": "stream MiB/s (h1)",
    "stream.peak_rss_mib": "stream peak RSS MiB",
    "sse.first_event_ms": "SSE first event ms",
    "sse.added_ms": "SSE first event, added ms",
    "idle.after_close_ratio": "RSS after close ÷ before",
    "idle.rss_start_mib": "RSS at start MiB",
    "idle.conn_kib_each": "KiB per idle conn",
    "idle.served": "idle conns served",
    "idle.rss_before_conns_mib": "RSS idle (fresh, 1 request) MiB",
    "idle.rss_after_close_mib": "RSS after close MiB",
    "startup.ready_s": "start to ready s",
    "vault.calls_per_req": "Vault calls/req",
}


NO_RATIO = ("idle.served", "vault.calls_per_req", "sse.added_ms", "idle.after_close_ratio")


def load_key(proto: str, conc: int, metric: str) -> str:
    return f"{proto}.c{conc}.{metric}"


def figure_label(key: str) -> str:
    if key in LABELS:
        return LABELS[key]
    parts = key.split(".")
    if len(parts) == 3 and parts[0] in ("h1", "h2") and parts[2] in LABELS:
        return f"{parts[0]} c={parts[1][1:]} {LABELS[parts[2]]}"
    if len(parts) == 3 and parts[0] == "h2h1":
        return f"h2/h1 c={parts[1][1:]} {LABELS.get(parts[2], parts[2])}"
    if len(parts) == 3 and parts[0] == "added":
        return f"added {parts[1]} p50 ms, c={parts[2][1:]}"
    return key


# --- parsing the load client's output ------------------------------------------------------

_HEY_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_HEY_PCT = re.compile(r"^\s*(\d+)% in ([\d.]+) secs", re.M)
_HEY_STATUS = re.compile(r"^\s*\[(\d+)\]\s+(\d+) responses", re.M)
_HEY_ERRORS = re.compile(r"Error distribution:(.*)", re.S)
_HEY_ERR_LINE = re.compile(r"^\s*\[(\d+)\]\s+(.+)$", re.M)


def parse_hey(text: str) -> dict[str, Any]:
    """hey's summary: req/s, p50/p99 (ms), responses by status, error count."""
    m = _HEY_RPS.search(text)
    if not m:
        raise ValueError(f"not a hey summary: {text[:300]!r}")
    pct = {int(p): float(s) * 1000 for p, s in _HEY_PCT.findall(text)}
    status = {int(code): int(n) for code, n in _HEY_STATUS.findall(text)}
    errors = 0
    em = _HEY_ERRORS.search(text)
    if em:
        errors = sum(int(n) for n, _ in _HEY_ERR_LINE.findall(em.group(1)))
    return {
        "rps": float(m.group(1)),
        "p50_ms": pct.get(50),
        "p99_ms": pct.get(99),
        "status": status,
        "ok": status.get(200, 0),
        "errors": errors + sum(n for code, n in status.items() if code != 200),
    }


# --- aggregation ---------------------------------------------------------------------------


def medians(rounds: Sequence[dict[str, dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Per arm, per figure: the median over the rounds that have a number for it."""
    values: dict[str, dict[str, list[float]]] = {}
    for rnd in rounds:
        for arm, figs in rnd.items():
            for key, v in figs.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    values.setdefault(arm, {}).setdefault(key, []).append(float(v))
    return {
        arm: {key: statistics.median(vs) for key, vs in figs.items()}
        for arm, figs in values.items()
    }


def add_derived(med: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """h2/h1 ratios per arm (req/s and CPU per request), p50 and SSE first event added over
    direct, RSS after the idle connections closed over RSS before them."""
    out = {arm: dict(figs) for arm, figs in med.items()}
    direct = med.get("direct", {})
    for arm, figs in out.items():
        for key in list(figs):
            parts = key.split(".")
            if len(parts) != 3 or parts[0] != "h1":
                continue
            h2 = figs.get(f"h2.{parts[1]}.{parts[2]}")
            if parts[2] in ("rps", "cpu_ms_per_req") and h2 is not None and figs[key]:
                figs[f"h2h1.{parts[1]}.{parts[2]}"] = h2 / figs[key]
        before, after = figs.get("idle.rss_before_conns_mib"), figs.get("idle.rss_after_close_mib")
        if before and after is not None:
            figs["idle.after_close_ratio"] = after / before
        if arm != "direct" and "sse.first_event_ms" in figs and "sse.first_event_ms" in direct:
            figs["sse.added_ms"] = figs["sse.first_event_ms"] - direct["sse.first_event_ms"]
        if arm != "direct":
            for key in list(figs):
                parts = key.split(".")
                if len(parts) == 3 and parts[0] in ("h1", "h2") and parts[2] == "p50_ms":
                    if key in direct:
                        figs[f"added.{parts[0]}.{parts[1]}"] = figs[key] - direct[key]
    return out


def ratios(med: dict[str, dict[str, float]]) -> dict[str, dict[str, dict[str, float]]]:
    """arm value / reference value, for each reference arm that has the figure."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for arm, figs in med.items():
        for key, v in figs.items():
            for ref in REFERENCES:
                rv = med.get(ref, {}).get(key)
                if ref != arm and rv:
                    out.setdefault(arm, {}).setdefault(key, {})[ref] = v / rv
    return out


def figure_order(keys: Iterable[str]) -> list[str]:
    keys = set(keys)
    order: list[str] = []
    for proto in ("h1", "h2"):
        for conc in sorted({int(k.split(".")[1][1:]) for k in keys if k.startswith(proto + ".")}):
            for metric in LOAD_METRICS:
                order.append(load_key(proto, conc, metric))
    for conc in sorted({int(k.split(".")[1][1:]) for k in keys if k.startswith("h2h1.")}):
        order += [f"h2h1.c{conc}.rps", f"h2h1.c{conc}.cpu_ms_per_req"]
    for proto in ("h1", "h2"):
        order += sorted(
            (k for k in keys if k.startswith(f"added.{proto}.")),
            key=lambda k: int(k.split(".")[2][1:]),
        )
    order += list(OTHER_FIGURES)
    seen = [k for k in order if k in keys]
    return seen + sorted(keys - set(seen))


# --- rendering -------------------------------------------------------------------------------


def fmt(v: float | None) -> str:
    if v is None:
        return "–"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    if a == 0:
        return "0"
    return f"{v:.3f}"


def _render(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest])

    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def tables(med: dict[str, dict[str, float]], arms: Sequence[str], markdown: bool = False) -> str:
    """Two tables: the medians per arm, then the ratios to direct / mitmdump / core."""
    arms = [a for a in arms if a in med]
    keys = figure_order(k for figs in med.values() for k in figs)
    rat = ratios(med)
    values = [[figure_label(k)] + [fmt(med[a].get(k)) for a in arms] for k in keys]
    refs = [r for r in REFERENCES if r in med]
    ratio_rows = []
    for k in keys:
        if k.startswith(("h2h1.", "added.")) or k in NO_RATIO:
            continue
        cells = []
        for a in arms:
            rs = rat.get(a, {}).get(k, {})
            cells.append(" / ".join(fmt(rs[r]) if r in rs else "–" for r in refs))
        if any(c.strip("–/ ") for c in cells):
            ratio_rows.append([figure_label(k), *cells])
    out = [_render(["figure (median)", *arms], values, markdown)]
    if ratio_rows:
        title = "ratio to " + " / ".join(refs) + " (arm ÷ reference)"
        out.append(_render([title, *arms], ratio_rows, markdown))
    return "\n\n".join(out)


def result_json(
    meta: dict[str, Any],
    arms: dict[str, dict[str, Any]],
    rounds: Sequence[dict[str, dict[str, Any]]],
) -> dict[str, Any]:
    med = add_derived(medians(rounds))
    return {
        "schema": "egress-bench/1",
        "meta": meta,
        "arms": arms,
        "rounds": list(rounds),
        "medians": med,
        "ratios": ratios(med),
    }
