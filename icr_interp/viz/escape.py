"""Escaping, one function per output context: HTML text, HTML attribute values, JSON inside ``<script>``.

Names in a report come from outside the program -- a knowledge base's CSV, a checkpoint's config, a
command-line argument -- so a subject called ``</script><script>alert(1)</script>`` or
``<img src=x onerror=...>`` must show as text and run nothing.  Every string that reaches a page goes
through exactly one of these, chosen by where it lands:

* :func:`text` -- between tags (``<td>``, ``<p>``, ``<title>``);
* :func:`attr` -- inside a quoted attribute value (``alt="..."``, ``title="..."``);
* :func:`script_json` -- a value serialised as JSON inside a ``<script>`` element (circuitsvis's props):
  ``<``, ``>``, ``&`` and the JavaScript line terminators U+2028/U+2029 become ``\\uXXXX`` escapes, so the
  text can neither close the element (``</script>``), open a comment (``<!--``) nor end a string literal.

Tokens drawn by circuitsvis as HTML (its token views set ``innerHTML``) are escaped with :func:`text` before
they become props (:mod:`icr_interp.viz.views`); the props themselves then go through :func:`script_json`.
"""

import html
import json

_SCRIPT_UNSAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def text(value) -> str:
    """``value`` as HTML text content: ``& < >`` and both quotes escaped."""
    return html.escape(str(value), quote=True)


def attr(value) -> str:
    """``value`` for a double- or single-quoted attribute value (the same escapes; quotes matter here)."""
    return html.escape(str(value), quote=True)


def script_json(value, **dumps) -> str:
    """``value`` as JSON that is safe inside ``<script>`` (see the module docstring)."""
    out = json.dumps(value, **dumps)
    for char, escaped in _SCRIPT_UNSAFE.items():
        out = out.replace(char, escaped)
    return out
