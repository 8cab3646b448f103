"""The one place that decides what of a URL is secret, for everything printed, logged or stored.

Secret: all userinfo but a username followed by a password (a user alone may be a token:
``nats://TOKEN@host``), and the value of every query parameter whose decoded name says
password, secret, token or key — however often it is repeated and however it is encoded.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, unquote_plus

_SECRET_WORDS = ("password", "passwd", "pwd", "secret", "token", "key")
MASK = "***"


def _secret_name(name: str) -> bool:
    decoded = unquote_plus(name).lower()
    return any(word in decoded for word in _SECRET_WORDS)


def _split(url: str) -> tuple[str, str, str, str, str]:
    """(scheme://, userinfo, rest of the authority and path, query, fragment). The userinfo
    ends at the last `@` of the authority, so an unencoded `@` in a password stays in it."""
    scheme, sep, tail = url.partition("://")
    if not sep:
        scheme, tail = "", url
    else:
        scheme += sep
    userinfo = ""
    if sep:
        end = min((i for i in (tail.find(c) for c in "/?#") if i >= 0), default=len(tail))
        at = tail.rfind("@", 0, end)
        if at >= 0:
            userinfo, tail = tail[:at], tail[at + 1 :]
    rest, _, fragment = tail.partition("#")
    rest, q, query = rest.partition("?")
    return scheme, userinfo, rest, query if q else "", fragment


def redact(url: str) -> str:
    """`url` with its secrets replaced by `***`, safe to print, log and store."""
    scheme, userinfo, rest, query, fragment = _split(url)
    out = scheme
    if userinfo:
        user, colon, _ = userinfo.partition(":")
        out += f"{user}:{MASK}@" if colon else f"{MASK}@"
    out += rest
    if query:
        parts = []
        for piece in query.split("&"):
            name, eq, _value = piece.partition("=")
            parts.append(f"{name}={MASK}" if eq and _secret_name(name) else piece)
        out += "?" + "&".join(parts)
    if fragment:
        out += "#" + fragment
    return out


def secrets_of(url: str) -> list[str]:
    """Every secret string in `url`, as written and decoded, longest first."""
    scheme, userinfo, _, query, _ = _split(url)
    found: set[str] = set()
    # A PostgreSQL user alone is a role name, not a token: masked in the URL, but not
    # hunted through free text, where "postgres" is also an extra's and a backend's name.
    role_only = scheme.lower() in ("postgresql://", "postgres://") and ":" not in userinfo
    if userinfo and not role_only:
        user, colon, password = userinfo.partition(":")
        for raw in (password,) if colon else (user,):
            found.update((raw, unquote(raw)))
        found.add(userinfo)
    for piece in query.split("&") if query else ():
        name, eq, value = piece.partition("=")
        if eq and _secret_name(name):
            found.update((value, unquote_plus(value), unquote(value)))
    return sorted((s for s in found if s), key=len, reverse=True)


def scrub(text: str, *urls: str | None) -> str:
    """`text` (an error message, a log line) with each URL's secrets replaced by `***`."""
    for url in urls:
        if not url:
            continue
        text = text.replace(url, redact(url))
        for secret in secrets_of(url):
            # Whole words only: a user-only URL (`postgres@host`) must not turn
            # "postgresql" into "***ql"; a secret shown in a message stands apart.
            text = re.sub(rf"(?<!\w){re.escape(secret)}(?!\w)", MASK, text)
    return text
