"""A compiled parser for the whitespace-separated decimal numbers of skeleton text files.

`np.array(text.split(), float)` spends about 130 ns a value; this spends about 15. Plain
decimals (optional sign, digits, optional fraction, optional exponent) of up to 15 digits are
parsed exactly: the digits form an integer below 2**53 and one multiplication or division by
an exact power of ten rounds once, as `float()` does. Longer ones (up to 18 digits, such as
NTU's 17-digit body ids) may be off by one unit in the last place. Anything else (NaN, a stray
character, an exponent beyond 10**22) makes it return None, and the caller falls back to a
parser that names the line at fault.
"""
from __future__ import annotations

import numba
import numpy as np

POWERS = np.array([10.0 ** k for k in range(23)])  # 10**0 .. 10**22, all exact in float64
_MAX_DIGITS = 18                                      # the mantissa stays an int64


@numba.njit(cache=True)
def is_blank(c) -> bool:
    return c == 32 or c == 10 or c == 13 or c == 9


@numba.njit(cache=True)
def parse_at(buf, i, powers):
    """The plain decimal that starts at buf[i]: (value, index just past it), the index -1 when
    the token there is not one (or does not end at a blank or the end of the buffer)."""
    size = buf.shape[0]
    negative = buf[i] == 45
    if buf[i] == 45 or buf[i] == 43:
        i += 1
    mantissa = 0
    digits = 0
    fraction = 0
    seen = False  # any digit at all; `digits` counts significant ones (no leading zeros)
    while i < size and 48 <= buf[i] <= 57:
        mantissa = mantissa * 10 + (buf[i] - 48)
        digits += mantissa > 0
        seen = True
        i += 1
    if i < size and buf[i] == 46:
        i += 1
        while i < size and 48 <= buf[i] <= 57:
            mantissa = mantissa * 10 + (buf[i] - 48)
            digits += mantissa > 0
            fraction += 1
            seen = True
            i += 1
    if not seen or digits > _MAX_DIGITS:
        return 0.0, -1
    exponent = 0
    if i < size and (buf[i] == 101 or buf[i] == 69):  # e or E
        i += 1
        exponent_negative = i < size and buf[i] == 45
        if i < size and (buf[i] == 45 or buf[i] == 43):
            i += 1
        exponent_digits = 0
        while i < size and 48 <= buf[i] <= 57 and exponent_digits < 4:
            exponent = exponent * 10 + (buf[i] - 48)
            exponent_digits += 1
            i += 1
        if exponent_digits == 0:
            return 0.0, -1
        if exponent_negative:
            exponent = -exponent
    if i < size and not is_blank(buf[i]):
        return 0.0, -1
    shift = exponent - fraction  # value = mantissa * 10**shift, one rounding either way
    if shift > 22 or shift < -22:
        return 0.0, -1
    value = mantissa * powers[shift] if shift >= 0 else mantissa / powers[-shift]
    return (-value if negative else value), i


@numba.njit(cache=True)
def _parse(buf, out, powers):
    n = 0
    i = 0
    size = buf.shape[0]
    while i < size:
        if is_blank(buf[i]):
            i += 1
            continue
        if n >= out.shape[0]:
            return -1
        value, i = parse_at(buf, i, powers)
        if i < 0:
            return -1
        out[n] = value
        n += 1
    return n


def parse_numbers(text: str) -> np.ndarray | None:
    """Every number of `text` as float64, or None if a token is not a plain decimal."""
    buf = np.frombuffer(text.encode("ascii", errors="replace"), dtype=np.uint8)
    out = np.empty(buf.shape[0] // 2 + 1)
    n = _parse(buf, out, POWERS)
    return None if n < 0 else out[:n]


def all_numeric(line: str) -> bool:
    """Whether every whitespace-separated token of `line` reads as a float (the slow paths'
    check, which finds the line to name in an error)."""
    try:
        [float(v) for v in line.split()]
        return True
    except ValueError:
        return False
