"""Content-Encoding decoding with a hard output limit, for bodies an agent or upstream chose.

mitmproxy's own decoder inflates without a limit (99 KiB of gzip can become hundreds of
MiB) and falls back to Python codecs for unknown names (``bz2_codec``, ``zlib_codec``...).
egress decodes only gzip, deflate, br and zstd (and identity), each incrementally, and stops
as soon as the output would pass the limit. Everything else is refused by the caller.
"""

from __future__ import annotations

import io
import zlib

import brotli
import zstandard

KNOWN = ("identity", "gzip", "x-gzip", "deflate", "br", "zstd")
_SLICE = 1024  # compressed bytes fed per step, so a step's output stays bounded
_ZSTD_WINDOW = 8 * 1024 * 1024


class DecodeError(ValueError):
    """The body cannot be decoded: unknown coding, corrupt data, or over the limit."""


class TooLarge(DecodeError):
    pass


def codings(header: str) -> list[str]:
    """The codings of a Content-Encoding header, in the order they were applied."""
    return [c.strip().lower() for c in header.split(",") if c.strip()]


def is_known(header: str) -> bool:
    return all(c in KNOWN for c in codings(header))


def decode(data: bytes, header: str, limit: int) -> bytes:
    """Undo every coding in ``header`` (last applied first). Raises DecodeError/TooLarge."""
    for coding in reversed(codings(header)):
        if coding == "identity":
            continue
        if coding in ("gzip", "x-gzip"):
            data = _zlib(data, 16 + zlib.MAX_WBITS, limit, members=True)
        elif coding == "deflate":
            try:
                data = _zlib(data, zlib.MAX_WBITS, limit)
            except TooLarge:
                raise
            except DecodeError:
                data = _zlib(data, -zlib.MAX_WBITS, limit)  # raw deflate, as some servers send
        elif coding == "br":
            data = _brotli(data, limit)
        elif coding == "zstd":
            data = _zstd(data, limit)
        else:
            raise DecodeError(f"unknown content-encoding {coding!r}")
    if len(data) > limit:
        raise TooLarge(f"the body is over {limit} bytes")
    return data


def _check(size: int, limit: int) -> None:
    if size > limit:
        raise TooLarge(f"the decoded body is over {limit} bytes")


def _zlib(data: bytes, wbits: int, limit: int, members: bool = False) -> bytes:
    out: list[bytes] = []
    size = 0
    rest = data
    while True:
        d = zlib.decompressobj(wbits)
        try:
            pending = rest
            while pending:
                chunk = d.decompress(pending, limit + 1 - size)
                size += len(chunk)
                out.append(chunk)
                _check(size, limit)
                pending = d.unconsumed_tail
            tail = d.flush()
        except zlib.error as e:
            raise DecodeError(f"corrupt compressed body ({e})") from None
        size += len(tail)
        out.append(tail)
        _check(size, limit)
        if not d.eof:
            raise DecodeError("truncated compressed body")
        rest = d.unused_data
        if not members or not rest.strip(b"\x00"):
            break
    return b"".join(out)


def _brotli(data: bytes, limit: int) -> bytes:
    d = brotli.Decompressor()
    out: list[bytes] = []
    size = 0
    try:
        for i in range(0, len(data), _SLICE):
            chunk = d.process(data[i : i + _SLICE])
            size += len(chunk)
            out.append(chunk)
            _check(size, limit)
    except brotli.error as e:
        raise DecodeError(f"corrupt brotli body ({e})") from None
    if not d.is_finished():
        raise DecodeError("truncated brotli body")
    return b"".join(out)


def _zstd(data: bytes, limit: int) -> bytes:
    dctx = zstandard.ZstdDecompressor(max_window_size=_ZSTD_WINDOW)
    try:
        with dctx.stream_reader(io.BytesIO(data), read_across_frames=True) as reader:
            out: list[bytes] = []
            size = 0
            while True:
                chunk = reader.read(min(limit + 1 - size, 1 << 20) or 1)
                if not chunk:
                    break
                size += len(chunk)
                out.append(chunk)
                _check(size, limit)
    except zstandard.ZstdError as e:
        raise DecodeError(f"corrupt zstd body ({e})") from None
    return b"".join(out)
