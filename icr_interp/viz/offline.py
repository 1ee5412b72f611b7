"""Self-contained HTML from circuitsvis views: the bundled script inlined once, nothing fetched.

circuitsvis ships its browser bundle inside the Python package
(``dist/cdn/iife.js``, a classic script defining the global ``CircuitsVis``).
A view's own HTML either inlines that bundle (``local_src``) or imports it
from a CDN (``cdn_src``).  :func:`offline_html` keeps only each view's
container and its ``CircuitsVis.render(...)`` call and inlines the bundle once
per document, made safe to sit inside ``<script>`` (:func:`script_safe`).
A view that would still load a script from the network is refused.
"""

import re
from functools import lru_cache
from pathlib import Path

import circuitsvis
from circuitsvis.utils.render import RenderedHTML

from icr_interp.viz.escape import text

BUNDLE_PATH = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"  # shipped with circuitsvis

_SOURCE_MAP = re.compile(r"^//# sourceMappingURL=\S*\s*$", re.MULTILINE)
_SELF_CLOSED_DIV = re.compile(r'<div(\s+id="circuits-vis-[^"]*"[^>]*?)\s*/>')
_CDN_CALL = re.compile(r'import\s*\{\s*render\s*,\s*(\w+)\s*\}\s*from\s*"https?://[^"]*";\s*'
                       r'render\(\s*("[^"]*")\s*,\s*\1\s*,')
REMOTE_SCRIPT = re.compile(  # a script fetched from elsewhere: <script src="//...">, import ... from "https://..."
    r"""(?:\bsrc\s*=\s*["']?|\bimport\b[^;]*?\bfrom\s*["']|\bimport\s*\(\s*["'])(?:https?:)?//""", re.IGNORECASE)

CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1200px; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 6px 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; vertical-align: top; }
th { background: #f4f4f4; text-align: center; } table.kv th { text-align: left; } td.text { text-align: left; }
caption { caption-side: top; text-align: left; font-size: 0.95em; color: #555; padding: 2px 0; }
tr.marked td { font-weight: bold; }
.figs img { margin: 4px 8px 4px 0; max-width: 100%; }
figure { margin: 8px 0 16px 0; } figcaption { color: #555; font-size: 0.9em; }
.headline { font-size: 1.15em; background: #f4f8ff; border: 1px solid #c8d8f0; padding: 8px 12px; }
pre { font-size: 0.8em; background: #f8f8f8; padding: 6px; }
.na { color: #888; font-style: italic; } td.construction { color: #888; background: #f6f6f6; }
p.rule, p.note { font-size: 0.85em; color: #444; max-width: 1000px; }
div.wide { overflow-x: auto; max-width: 100%; } table.scores { font-size: 0.8em; }
table.rows td { min-width: 46px; text-align: center; } table.rows td.text { text-align: left; white-space: nowrap; }
table.rows .tok { display: block; font-size: 0.8em; opacity: 0.85; max-width: 9em; overflow: hidden;
  text-overflow: ellipsis; white-space: nowrap; }
table.rows th.role { min-width: 46px; } table.rows tr.mean td, table.rows tr.mean th { border-top: 2px solid #888; }
"""


@lru_cache(maxsize=1)
def bundle() -> str:
    """circuitsvis's browser bundle (defines the global ``CircuitsVis``)."""
    if not BUNDLE_PATH.is_file():
        raise FileNotFoundError(f"circuitsvis bundle not found at {BUNDLE_PATH}; reinstall circuitsvis")
    return BUNDLE_PATH.read_text(encoding="utf-8")


def script_safe(js: str) -> str:
    """JavaScript that can sit inside ``<script>``: no end tag, no comment opener, no source map."""
    js = _SOURCE_MAP.sub("", js)
    # Both only occur inside string or regex literals, where "\/" == "/" and "\!" == "!".
    return re.sub(r"</(script)", r"<\\/\1", js, flags=re.IGNORECASE).replace("<!--", "<\\!--")


def fragment(view: RenderedHTML | str) -> str:
    """The view's markup with its render call only, expecting the bundle in the page."""
    src = view.local_src if isinstance(view, RenderedHTML) else str(view)
    src = src.replace(bundle().replace("</script>", ""), "")  # render_local's inlined copy
    src = _CDN_CALL.sub(r"CircuitsVis.render(\2, CircuitsVis.\1,", src)  # a CDN string -> the bundle's global
    src = _SELF_CLOSED_DIV.sub(r"<div\1></div>", src)  # "<div/>" is not self-closing in HTML
    src = _SOURCE_MAP.sub("", src)
    if REMOTE_SCRIPT.search(src):
        raise ValueError("view loads a script from the network and cannot be made self-contained")
    return src


def document(title: str, body: str, with_bundle: bool = True) -> str:
    """A complete HTML page: our CSS, circuitsvis's bundle (inlined once) and ``body``."""
    script = f"<script>{script_safe(bundle())}</script>" if with_bundle else ""
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{text(title)}</title>\n'
            f"<style>{CSS}</style>\n{script}\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def offline_html(view: RenderedHTML | str | list, title: str = "circuitsvis view") -> str:
    """A self-contained HTML document showing circuitsvis view(s) with no network access.

    Args:
        view: a circuitsvis ``RenderedHTML`` (ours or circuitsvis's), its CDN
            string, or a list of them.
        title: the document title.
    """
    views = view if isinstance(view, list) else [view]
    body = "\n".join(f'<section class="view">{fragment(v)}</section>' for v in views)
    return document(title, f"<h1>{text(title)}</h1>\n{body}")
