"""Content-Encoding decoding with a hard output limit, for bodies an agent or upstream chose.

mitmproxy's own decoder inflates without a limit (99 KiB of gzip can become hundreds of
MiB) and falls back to Python codecs for unknown names (``bz2_codec``, ``zlib_codec``...).
egress decodes only gzip, deflate, br and zstd (and identity), each incrementally, and stops
as soon as the output would pass the limit. Everything else is refused by the caller.

It also removes ``aws-chunked``, the framing boto3 (1.36 and later), the AWS CLI and other
AWS SDKs put around S3 uploads (PutObject, UploadPart): ``hex-size[;chunk-signature=SIG]``
CRLF, data, CRLF, ..., a zero-size chunk, then trailer lines (``x-amz-checksum-crc32:...``,
``x-amz-trailer-signature:...``) and an empty line. Without it every such upload was
refused as undecodable. It is a framing, not a compression, so it never makes a body
larger; AWS lists it first in ``aws-chunked,gzip`` although it is the outer layer, so it is
removed first wherever it appears in the header. The parser is strict: anything but that
exact grammar is refused, so egress scans the very bytes a strict server stores. Trailers
(checksums, the trailer signature) are parsed but neither checked nor scanned here.
"""

from __future__ import annotations

import io
import zlib

import brotli
import zstandard

AWS_CHUNKED = "aws-chunked"

KNOWN = ("identity", "gzip", "x-gzip", "deflate", "br", "zstd", AWS_CHUNKED)
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


def is_aws_chunked(header: str) -> bool:
    """Whether a Content-Encoding header includes the aws-chunked framing."""
    return AWS_CHUNKED in codings(header)


def decode(data: bytes, header: str, limit: int) -> bytes:
    """Undo every coding in ``header`` (last applied first; aws-chunked, the outer framing
    wherever it is listed, before all). Raises DecodeError/TooLarge."""
    names = codings(header)
    if AWS_CHUNKED in names:
        if names.count(AWS_CHUNKED) > 1:
            raise DecodeError("content-encoding lists aws-chunked more than once")
        names = [c for c in names if c != AWS_CHUNKED]
        # The framing only removes bytes: under another coding its payload is that coding's
        # input, bounded by the body's own size; that coding's decoder enforces the limit.
        data, _ = split_aws_chunked(data, limit if not names else max(limit, len(data)))
    for coding in reversed(names):
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


# aws-chunked grammar bounds. A size line is at most 16 hex digits, ";chunk-signature=" and
# 64 hex digits; trailers are few and short (a checksum and the trailer signature).
_SIZE_DIGITS = 16
_SIG_EXT = b";chunk-signature="
_SIG_DIGITS = 64
_SIZE_LINE = _SIZE_DIGITS + len(_SIG_EXT) + _SIG_DIGITS
MAX_TRAILERS = 64
MAX_TRAILER_LINE = 8 * 1024
_HEX = frozenset(b"0123456789abcdefABCDEF")
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_VCHAR = frozenset(range(0x20, 0x7F)) | frozenset(range(0x80, 0x100)) | {0x09}


def split_aws_chunked(data: bytes, limit: int) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """Remove the aws-chunked framing: the payload and the trailer fields (name, value), in
    order. Strict: one exact grammar, CRLF line ends, nothing after the final empty line.

    Raises DecodeError naming the problem (and the byte offset), TooLarge as soon as a chunk
    would take the payload over ``limit`` (before it is copied). Linear in ``len(data)``."""
    view = memoryview(data)
    end = len(data)
    parts: list[memoryview] = []
    size_total = pos = 0
    while True:
        eol = _line_end(data, pos, _SIZE_LINE, "chunk-size line")
        line = bytes(view[pos:eol])
        digits, sep, ext = line.partition(b";")
        if not digits or len(digits) > _SIZE_DIGITS or not _HEX.issuperset(digits):
            raise DecodeError(
                f"aws-chunked: bad chunk size {_show(digits)} at byte {pos} "
                f"(expected 1 to {_SIZE_DIGITS} hex digits)"
            )
        if sep and not (
            line[len(digits) :].startswith(_SIG_EXT)
            and len(ext) == len(_SIG_EXT) - 1 + _SIG_DIGITS
            and _HEX.issuperset(line[len(digits) + len(_SIG_EXT) :])
        ):
            raise DecodeError(
                f"aws-chunked: bad chunk extension {_show(b';' + ext)} at byte {pos} (only "
                f"';chunk-signature=' and {_SIG_DIGITS} hex digits is allowed)"
            )
        size = int(digits, 16)
        pos = eol + 2
        if size == 0:
            break
        if size_total + size > limit:
            raise TooLarge(f"the aws-chunked payload is over {limit} bytes")
        if end - pos < size + 2:
            raise DecodeError(
                f"aws-chunked: truncated chunk at byte {pos} ({size} bytes announced, "
                f"{max(end - pos, 0)} left including its CRLF)"
            )
        if view[pos + size : pos + size + 2] != b"\r\n":
            raise DecodeError(
                f"aws-chunked: the chunk of {size} bytes at byte {pos} is not followed by CRLF "
                "(wrong chunk size?)"
            )
        parts.append(view[pos : pos + size])
        size_total += size
        pos += size + 2
    trailers: list[tuple[bytes, bytes]] = []
    while True:
        eol = _line_end(data, pos, MAX_TRAILER_LINE, "trailer line")
        if eol == pos:
            pos += 2
            break
        if len(trailers) == MAX_TRAILERS:
            raise DecodeError(f"aws-chunked: more than {MAX_TRAILERS} trailer lines")
        line = bytes(view[pos:eol])
        name, colon, value = line.partition(b":")
        if not colon or not name or not _TCHAR.issuperset(name):
            raise DecodeError(
                f"aws-chunked: bad trailer line {_show(line)} at byte {pos} (expected "
                "name:value, the name a token)"
            )
        if not _VCHAR.issuperset(value):
            raise DecodeError(
                f"aws-chunked: control character in the value of trailer {_show(name)} at "
                f"byte {pos}"
            )
        trailers.append((name, value.strip(b" \t")))
        pos = eol + 2
    if pos != end:
        raise DecodeError(
            f"aws-chunked: {end - pos} bytes after the end of the body (at byte {pos})"
        )
    return b"".join(parts), trailers


def _line_end(data: bytes, pos: int, longest: int, what: str) -> int:
    """The offset of the CRLF ending the line at ``pos``, which is at most ``longest`` bytes
    long. Looks at no more than ``longest + 2`` bytes, so parsing stays linear."""
    window_end = pos + longest + 2
    eol = data.find(b"\r\n", pos, window_end)
    # Up to the CRLF; without one, up to the window (but a CR as the body's last byte is a
    # truncated line end, not a bare CR).
    stop = eol if eol >= 0 else window_end
    bare = data.find(b"\n", pos, stop)
    cr = data.find(b"\r", pos, stop if eol >= 0 else min(stop, len(data) - 1))
    if bare >= 0 or cr >= 0:
        raise DecodeError(
            f"aws-chunked: a bare {'LF' if bare >= 0 else 'CR'} in the {what} at byte {pos} "
            "(lines must end with CRLF)"
        )
    if eol >= 0:
        return eol
    if len(data) < window_end:
        if pos >= len(data):
            raise DecodeError(
                f"aws-chunked: the body ends where a {what} was expected (byte {pos})"
            )
        raise DecodeError(f"aws-chunked: the body ends inside a {what} (byte {pos}, no CRLF)")
    raise DecodeError(f"aws-chunked: a {what} longer than {longest} bytes at byte {pos}")


def _show(b: bytes) -> str:
    """A short, printable rendering of bytes from the body for an error message."""
    text = repr(bytes(b[:40]))[1:]
    return text + ("..." if len(b) > 40 else "")


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
