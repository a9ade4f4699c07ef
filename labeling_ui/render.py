"""Prompts and responses as safe HTML: Markdown with highlighted code, long ones collapsed behind "show all".

    from labeling_ui.render import response_html
    html = response_html("Use `sorted`:\\n\\n```python\\nsorted(xs)\\n```", "A")

The result goes into a ``gr.HTML``, which Gradio inserts as it is (it sanitizes nothing: an
``onerror`` attribute there runs), so safety is this module's job and rests on three rules:

- raw HTML in the text is never HTML: markdown-it runs with ``html=False``, so ``<script>``,
  ``<img onerror>`` and the like come out as escaped text;
- links keep only ``http``, ``https`` and ``mailto`` targets (no ``javascript:``, ``data:``, nor
  relative ones, which would reach this server's own endpoints such as ``/logout``), and open in
  a new tab without a referrer; images are not rendered (no tracking pixels), their syntax stays text;
- code is escaped by Pygments (or markdown-it when the language is unknown).

Speed: Markdown costs about 3 microseconds a character here, so only the first
``MARKDOWN_LIMIT`` characters are rendered as Markdown and the rest is escaped plain text
(a 1 MB response appears in well under a second); code blocks longer than ``HIGHLIGHT_LIMIT``
are not highlighted.
"""

from __future__ import annotations

import difflib
import html
import re
from typing import Any
from urllib.parse import urlsplit

from markdown_it import MarkdownIt
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.util import ClassNotFound

MARKDOWN_LIMIT = 50_000
HIGHLIGHT_LIMIT = 20_000
COLLAPSE_CHARS = 1_200  # longer responses start collapsed ...
COLLAPSE_LINES = 18  # ... and so do ones with more lines than this
SAFE_SCHEMES = ("http", "https", "mailto")
DIFF_TOKENS = 20_000  # longer responses are not diffed (SequenceMatcher grows faster than linearly)
CODE_CSS = HtmlFormatter(style="default").get_style_defs(".md pre code")


def _highlight(code: str, lang: str, _attrs: Any) -> str:
    """Pygments spans for a fenced block in a known language; "" lets markdown-it escape it as plain code."""
    if not lang or len(code) > HIGHLIGHT_LIMIT:
        return ""
    try:
        lexer = get_lexer_by_name(lang.split()[0])
    except ClassNotFound:
        return ""
    return highlight(code, lexer, HtmlFormatter(nowrap=True))


def _safe_link(url: str) -> bool:
    scheme = urlsplit(url.strip()).scheme.lower()
    return scheme in SAFE_SCHEMES


def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "highlight": _highlight}).enable(["table", "strikethrough"])
    md.disable("image")
    md.validateLink = _safe_link  # markdown-it's own check lets relative links through

    def link_open(renderer: Any, tokens: list, idx: int, options: Any, env: Any) -> str:
        tokens[idx].attrSet("target", "_blank")
        tokens[idx].attrSet("rel", "noopener noreferrer nofollow")
        return renderer.renderToken(tokens, idx, options, env)

    md.add_render_rule("link_open", link_open)
    return md


_MD = _markdown()


def markdown_html(text: str) -> str:
    """``text`` as safe HTML: Markdown up to ``MARKDOWN_LIMIT`` characters (cut at a line end), plain text after."""
    if len(text) <= MARKDOWN_LIMIT:
        return _MD.render(text)
    cut = text.rfind("\n", 0, MARKDOWN_LIMIT) + 1 or MARKDOWN_LIMIT
    rest = html.escape(text[cut:], quote=False)
    return (f"{_MD.render(text[:cut])}<p class=\"plain-note\">(past {cut:,} characters, shown as plain text)</p>"
            f"<pre class=\"plain\">{rest}</pre>")


def is_long(text: str) -> bool:
    return len(text) > COLLAPSE_CHARS or text.count("\n") > COLLAPSE_LINES


def response_html(text: str, name: str) -> str:
    """One response, collapsed with a "show all" button when long; ``name`` (A, B, ...) is set by the app."""
    body = f'<div class="response-body md">{markdown_html(text)}</div>'
    if not is_long(text):
        return f'<div class="response" data-name="{name}">{body}</div>'
    button = f'<button type="button" class="show-all">Show all ({len(text):,} characters) [e]</button>'
    return f'<div class="response long collapsed" data-name="{name}">{body}{button}</div>'


def prompt_html(prompt: str | list[dict[str, Any]]) -> str:
    """A prompt string, or each chat message under its role, as Markdown."""
    if isinstance(prompt, str):
        return f'<div class="prompt md">{markdown_html(prompt)}</div>'
    turns = "".join(
        f'<div class="turn"><div class="role">{html.escape(str(m["role"]))}</div>{markdown_html(str(m["content"]))}</div>'
        for m in prompt
    )
    return f'<div class="prompt md">{turns}</div>'


def _tokens(text: str) -> list[str]:
    """Words, runs of whitespace and single punctuation marks: joined back they give ``text`` exactly."""
    return re.findall(r"\s+|\w+|[^\w\s]", text)


def diff_html(a: str, b: str, names: tuple[str, str] = ("A", "B")) -> str:
    """A word-level diff of two responses, side by side: words only in A struck through, only in B underlined.

    The texts are shown as plain text (every piece escaped, no Markdown), so the diff is as safe
    as the rest of this module; past ``DIFF_TOKENS`` words a note replaces it.
    """
    left, right = _tokens(a), _tokens(b)
    if len(left) > DIFF_TOKENS or len(right) > DIFF_TOKENS:
        return f'<div class="diff-note">Responses too long to compare word by word (over {DIFF_TOKENS:,} words).</div>'
    out_a: list[str] = []
    out_b: list[str] = []
    matcher = difflib.SequenceMatcher(None, left, right, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        old, new = html.escape("".join(left[i1:i2])), html.escape("".join(right[j1:j2]))
        if op == "equal":
            out_a.append(old)
            out_b.append(new)
            continue
        if old:
            out_a.append(f"<del>{old}</del>")
        if new:
            out_b.append(f"<ins>{new}</ins>")
    share = matcher.ratio()
    head = f'<div class="diff-note">{share:.0%} alike; only in {html.escape(names[0])}: struck through, only in {html.escape(names[1])}: underlined</div>'
    sides = "".join(f'<div class="diff-side"><div class="role">{html.escape(name)}</div><pre class="diff">{body}</pre></div>'
                    for name, body in zip(names, ("".join(out_a), "".join(out_b))))
    return f'<div class="diff-view">{head}<div class="diff-sides">{sides}</div></div>'
