"""The path-readings cache and the query pre-check of override_methods never change an
answer; the cache stays bounded."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import parse_qsl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egress import routing
from egress.grammar import fold_name
from egress.routing import (
    OVERRIDE_HEADERS,
    READINGS_CACHE_ENTRIES,
    READINGS_CACHE_MAX_CHARS,
    override_methods,
    path_readings,
)

PATHS = ["/", "/repos/o/r", "/repos/../admin", "/a%2fb", "/%2e%2e/x", "/admin;x=1", "/x//y",
         "/%ff", "/r%65pos/x", "", "/\uff0e\uff0e/x", "/a\\b", "/%00", "/%25252e%25252e/",
         "/%2525252e", "/caf\u00e9", "/\udc80", "/a/./b", "/a;/b", "/" + "x" * 300]  # fmt: skip


def outcome(fn, *args):  # type: ignore[no-untyped-def]
    """What a call gives: its answer, or the type and text of what it raised."""
    try:
        return "ok", fn(*args)
    except Exception as e:  # noqa: BLE001 (compared, not handled)
        return "raised", type(e), str(e)


def same_readings(path: str) -> None:
    want = outcome(routing._path_readings, path)
    first = outcome(path_readings, path)
    assert first == want
    if first[0] == "ok":
        first[1][0].append("mutated")  # the caller's own list: the next answer is unchanged
    assert outcome(path_readings, path) == want


@pytest.mark.parametrize("path", PATHS)
def test_cached_readings_equal_the_uncached(path: str) -> None:
    same_readings(path)


path_text = st.text(alphabet="/%.;\\2eEfF5cC0a\u00e9\uff0e\u2024x", max_size=30)


@settings(max_examples=500, deadline=None)
@given(
    path=path_text
    | st.text(max_size=40)
    | st.text(alphabet=st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF), max_size=3).map(
        lambda t: "/a" + t
    )
)
def test_generated_paths_get_the_uncached_readings(path: str) -> None:
    same_readings(path)


def test_the_readings_cache_stays_bounded() -> None:
    for i in range(3 * READINGS_CACHE_ENTRIES):
        path_readings(f"/items/{i}")
    assert routing._readings_cached.cache_info().currsize <= READINGS_CACHE_ENTRIES
    routing._readings_cached.cache_clear()
    long_path = "/a" * READINGS_CACHE_MAX_CHARS
    assert path_readings(long_path) == routing._path_readings(long_path)
    assert routing._readings_cached.cache_info().currsize == 0


def reference_override_methods(headers: Iterable[tuple[str, str]], path: str) -> list[str]:
    """override_methods (without a body) before the query pre-check."""
    out = [
        v.strip().upper()
        for k, v in headers
        if fold_name(k) in OVERRIDE_HEADERS
        for v in v.split(",")
        if v.strip()
    ]
    query = path.partition("?")[2]
    out += [v.strip().upper() for k, v in parse_qsl(query, keep_blank_values=True)
            if routing._param_name(k) == routing.OVERRIDE_PARAM]  # fmt: skip
    return list(dict.fromkeys(out))


KEYS = ["_method", "_METHOD", ".method", "[method", " _method", "+_method", "_method+", "%5Fmethod",
        "_%6Dethod", "_%6d%65thod", "%5f%4D%45%54%48%4F%44", "method", "__method", "_meth", "page",
        "_m%C3%A9thod", "_Method ", "\u212a", "_method\u0130", "x", ""]  # fmt: skip
VALUES = ["PUT", "delete", "", " patch ", "%50UT", "GET,POST", "\u00e9"]


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("value", VALUES)
def test_query_overrides_equal_the_reference(key: str, value: str) -> None:
    for path in (
        f"/p?{key}={value}",
        f"/p?a=1&{key}={value}&b",
        f"/p?{key}",
        f"/?{key}={value};x=1",
    ):
        assert override_methods([], path) == reference_override_methods([], path)


query_text = st.lists(
    st.tuples(st.sampled_from(KEYS) | st.text(max_size=8), st.sampled_from(VALUES) | st.text(max_size=6)),
    max_size=4,
).map(lambda kv: "&".join(f"{k}={v}" for k, v in kv))  # fmt: skip
headers = st.lists(
    st.tuples(st.sampled_from(["X-HTTP-Method-Override", "x_http_method", "X-Method-Override", "Accept"]),
              st.sampled_from(VALUES)),
    max_size=3,
)  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(query=query_text | st.text(max_size=30), hdrs=headers)
def test_generated_requests_get_the_reference_overrides(
    query: str, hdrs: list[tuple[str, str]]
) -> None:
    path = "/p?" + query
    assert override_methods(hdrs, path) == reference_override_methods(hdrs, path)
