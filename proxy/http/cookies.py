"""Cookies as browsers send them (RFC 6265 §4.2.1, §5.4): `name=value` pairs joined by `;`.

Invariants
- A pair that does not parse (no `=`, an empty name) is skipped; the pairs after it still count.
  One odd cookie (a JSON value, a comma, a space) never hides the others.
- Names and values are taken as sent, less the whitespace around them and one pair of double
  quotes around a value (as the frameworks that set them read them back).
- When a name comes twice, the first wins: browsers send the most specific cookie first.
"""

from __future__ import annotations


def parse_cookies(headers: list[str]) -> dict[str, str]:
    """Every cookie in the `Cookie` header values, first value of a name winning.

    >>> parse_cookies(['prefs={"x":1}; uid=alice; uid=bob'])
    {'prefs': '{"x":1}', 'uid': 'alice'}
    """
    cookies: dict[str, str] = {}
    for header in headers:
        for pair in header.split(";"):
            name, equals, value = pair.partition("=")
            name = name.strip()
            if not equals or not name:
                continue
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            cookies.setdefault(name, value)
    return cookies
