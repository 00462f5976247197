"""Reading the JavaScript object literals JD inlines in its pages (``var pageConfig = {...}``).

Not strict JSON: single-quoted strings, bare keys and identifiers, trailing commas.
"""

from __future__ import annotations

import json
import re


def balanced(text: str, start: int) -> str | None:
    """The ``{...}`` starting at ``start``, honouring quoted strings."""
    depth, quote, i = 0, None, start
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "{" or ch == "[":
            depth += 1
        elif ch == "}" or ch == "]":
            depth -= 1
            if depth == 0:
                return text[start: i + 1]
        i += 1
    return None


_TOKEN = re.compile(r"""\s*(?:(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(?P<punct>[{}\[\]:,])|(?P<word>[^\s{}\[\]:,'"]+))""", re.S)


def js_literal(text: str):
    """Read a JavaScript object literal (single quotes, bare keys, trailing commas) as Python data."""
    tokens = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            if text[pos:].strip() == "":
                break
            raise ValueError(f"unreadable JavaScript near {text[pos:pos + 30]!r}")
        pos = m.end()
        if m.group("str") is not None:
            raw = m.group("str")
            body = raw[1:-1]
            if raw[0] == "'":
                body = body.replace("\\'", "'").replace('"', '\\"')
            tokens.append(("value", json.loads('"' + body + '"')))
        elif m.group("punct") is not None:
            tokens.append(("punct", m.group("punct")))
        else:
            word = m.group("word")
            if word in ("true", "false", "null"):
                tokens.append(("value", {"true": True, "false": False, "null": None}[word]))
            else:
                try:
                    tokens.append(("value", json.loads(word)))
                except json.JSONDecodeError:
                    tokens.append(("value", word))  # a bare key or identifier
    value, end = _read(tokens, 0)
    return value


def _read(tokens, i):
    kind, tok = tokens[i]
    if kind == "value":
        return tok, i + 1
    if tok == "{":
        out, i = {}, i + 1
        while tokens[i] != ("punct", "}"):
            key, i = _read(tokens, i)
            if tokens[i] != ("punct", ":"):
                raise ValueError("expected ':' in object literal")
            out[str(key)], i = _read(tokens, i + 1)
            if tokens[i] == ("punct", ","):
                i += 1
        return out, i + 1
    if tok == "[":
        out, i = [], i + 1
        while tokens[i] != ("punct", "]"):
            item, i = _read(tokens, i)
            out.append(item)
            if tokens[i] == ("punct", ","):
                i += 1
        return out, i + 1
    raise ValueError(f"unexpected {tok!r} in object literal")
