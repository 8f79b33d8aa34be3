"""Lossless TIFF strip decoders for replay: LZW, Deflate and PackBits, and the horizontal predictor.

OpenCV reads page i of a multi-page TIFF by walking the i pages before it, so a replay of a
compressed stack slowed down as it went (6,000 LZW pages of 256x96, as OpenCV writes them by
default: 45 frames/s by the 5,000th page). Pillow decodes each page through libtiff in ~8 ms. With
the strips' offsets from the page directories (:mod:`acquisition.replay`), decoding them here keeps
every page as cheap as the first.
"""

from __future__ import annotations

import zlib

import numpy as np

from mimlsort.jit import njit

LZW, DEFLATE, ADOBE_DEFLATE, PACKBITS = 5, 32946, 8, 32773
#: TIFF Compression values decoded here (1: none, read as plain bytes)
DECODED = (1, LZW, DEFLATE, ADOBE_DEFLATE, PACKBITS)


class StripError(ValueError):
    """A strip that does not decode to the bytes its page needs."""


@njit(nogil=True, cache=True)
def lzw_decode(src, dst):
    """TIFF LZW (codes MSB first, 9 to 12 bits, the width growing one code early, as every TIFF
    writer since 1992 does) of ``src`` into ``dst``; returns the bytes written, or -1 for a
    stream that is not such LZW (an unknown code, or one that does not start with Clear)."""
    prefix = np.empty(4096, np.int32)
    suffix = np.empty(4096, np.uint8)
    first = np.empty(4096, np.uint8)
    length = np.empty(4096, np.int32)
    for i in range(256):
        prefix[i] = -1
        suffix[i] = i
        first[i] = i
        length[i] = 1
    nbits = len(src) * 8
    bit = 0
    width = 9
    nxt = 258
    old = -1
    out = 0
    cap = len(dst)
    started = False
    while bit + width <= nbits:
        # the code's bits, MSB first, from up to three bytes
        byte = bit >> 3
        v = np.int64(src[byte]) << 16
        if byte + 1 < len(src):
            v |= np.int64(src[byte + 1]) << 8
        if byte + 2 < len(src):
            v |= np.int64(src[byte + 2])
        code = int((v >> (24 - (bit & 7) - width)) & ((1 << width) - 1))
        bit += width
        if code == 256:  # Clear
            width = 9
            nxt = 258
            old = -1
            started = True
            continue
        if not started:
            return -1
        if code == 257:  # EOI
            break
        if code < nxt and (code < 256 or code >= 258):
            c = code
            kwkwk = False
        elif code == nxt and old >= 0:
            c = old  # the entry being made: old's string and its own first byte
            kwkwk = True
        else:
            return -1
        n = length[c]
        pos = out + n - 1
        k = c
        while k >= 0:  # the string, written from its last byte back
            if pos < cap:
                dst[pos] = suffix[k]
            pos -= 1
            k = prefix[k]
        lead = first[c]
        if kwkwk:
            if out + n < cap:
                dst[out + n] = lead
            n += 1
        out = min(out + n, cap)
        if old >= 0 and nxt < 4096:
            prefix[nxt] = old
            suffix[nxt] = lead
            first[nxt] = first[old]
            length[nxt] = length[old] + 1
            nxt += 1
            if nxt >= (1 << width) - 1 and width < 12:
                width += 1
        old = code
        if out >= cap:
            break
    return out


@njit(nogil=True, cache=True)
def packbits_decode(src, dst):
    """PackBits (Apple's run-length code) of ``src`` into ``dst``; returns the bytes written."""
    i = 0
    out = 0
    n = len(src)
    cap = len(dst)
    while i < n and out < cap:
        h = np.int32(src[i])
        i += 1
        if h < 128:  # h + 1 literal bytes
            k = min(h + 1, n - i, cap - out)
            for j in range(k):
                dst[out + j] = src[i + j]
            i += h + 1
            out += k
        elif h > 128:  # the next byte 257 - h times
            if i >= n:
                break
            k = min(257 - h, cap - out)
            for j in range(k):
                dst[out + j] = src[i]
            i += 1
            out += k
    return out


def decode_strip(compression: int, data: bytes, dst: np.ndarray) -> None:
    """Decode one strip into ``dst`` (uint8, the strip's share of its page, filled exactly)."""
    if compression == 1:
        got = min(len(data), dst.size)
        dst[:got] = np.frombuffer(data, np.uint8, got)
    elif compression == LZW:
        got = lzw_decode(np.frombuffer(data, np.uint8), dst)
        if got < 0:
            raise StripError("its LZW data are damaged (or old-style LZW)")
    elif compression in (DEFLATE, ADOBE_DEFLATE):
        try:
            raw = zlib.decompressobj().decompress(data, dst.size)
        except zlib.error as err:
            raise StripError(f"its Deflate data are damaged ({err})") from err
        got = len(raw)
        dst[:got] = np.frombuffer(raw, np.uint8)
    elif compression == PACKBITS:
        got = packbits_decode(np.frombuffer(data, np.uint8), dst)
    else:
        raise StripError(f"compression {compression} is not decoded here")
    if got < dst.size:
        raise StripError(f"it decodes to {got} of its {dst.size} bytes")


def undo_predictor(rows: np.ndarray) -> None:
    """TIFF's horizontal predictor (2): each sample was stored as its difference from the one
    before it in the row; ``rows`` (unsigned samples, native order) are summed back in place."""
    np.cumsum(rows, axis=1, dtype=rows.dtype, out=rows)
