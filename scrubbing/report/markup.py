"""The one way the report writes HTML and SVG: ``el(tag, attrs, *children)`` escapes every attribute value and
every text child, so no rendering function formats markup by hand.

A ``Markup`` is text ``el`` made (or a trusted constant: the stylesheet, the CSP); it passes through unescaped.
"""

from __future__ import annotations

import html
from typing import Iterable

# Elements HTML writes without a closing tag, and SVG shapes written self-closing when they have no children.
_VOID = frozenset({"meta", "br", "hr", "img", "input", "link"})
_SELF_CLOSING = frozenset({"rect", "line", "circle", "path", "polyline", "polygon", "ellipse"})


class Markup(str):
    """Already-escaped markup: ``el`` inserts it as is."""


def escape(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _flat(children: Iterable) -> Iterable:
    for child in children:
        if isinstance(child, (list, tuple)):
            yield from _flat(child)
        elif child is not None and child is not False:
            yield child


def join(*parts) -> Markup:
    """Fragments (markup or text, nested lists allowed) side by side; text is escaped."""
    return Markup("".join(p if isinstance(p, Markup) else escape(p) for p in _flat(parts)))


def el(tag: str, attrs: dict | None = None, *children) -> Markup:
    """``<tag a="v">children</tag>``; attributes whose value is None are left out."""
    head = "".join(f' {k}="{v if isinstance(v, Markup) else escape(v)}"'
                   for k, v in (attrs or {}).items() if v is not None)
    if tag in _VOID:
        return Markup(f"<{tag}{head}>")
    body = join(*children)
    if not body and tag in _SELF_CLOSING:
        return Markup(f"<{tag}{head}/>")
    return Markup(f"<{tag}{head}>{body}</{tag}>")


def f1(x: float) -> str:
    """A coordinate, to a tenth of a pixel."""
    return f"{x:.1f}"
