"""What annotators read: Markdown rendered safely (no raw HTML, no script links), long texts quick and collapsed."""

from __future__ import annotations

import re
import time

import pytest

from labeling_ui.render import MARKDOWN_LIMIT, markdown_html, prompt_html, response_html
from labeling_ui.schemas import ranks_from_order

HOSTILE = [
    "<script>document.title='pwned'</script>",
    '<img src=x onerror="document.title=\'pwned\'">',
    "[click](javascript:alert(1))",
    "[click](JaVaScRiPt:alert(1))",
    "[click]( javascript:alert(1) )",
    "[logout](/logout)",
    "<javascript:alert(1)>",
    "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "![pixel](http://evil.example/p.png)",
    '```"><script>alert(1)</script>\ncode\n```',
    '<a href="http://evil.example" onclick="alert(1)">x</a>',
]


def test_markdown_is_rendered_with_highlighted_code() -> None:
    out = markdown_html("# Title\n\n**bold** and `x`\n\n- one\n- two\n\n```python\ndef f():\n    return 1\n```\n")
    assert "<h1>Title</h1>" in out and "<strong>bold</strong>" in out and "<code>x</code>" in out
    assert out.count("<li>") == 2
    assert re.search(r'<pre><code class="language-python"><span class="k">def</span>', out), out
    link = markdown_html("[docs](https://example.org/a?b=1)")
    assert 'href="https://example.org/a?b=1"' in link and 'rel="noopener noreferrer nofollow"' in link


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_markdown_stays_text(text: str) -> None:
    out = markdown_html(text)
    assert not re.search(r"<(script|img|iframe)\b|\son\w+=\"|href=\"(?!https?:)", out), out
    assert "javascript:" not in re.findall(r'href="([^"]*)"', out)


def test_a_megabyte_response_renders_quickly_and_collapsed() -> None:
    text = ("A paragraph with **bold** text and `code`.\n\n```python\nx = 1\n```\n\n" * 20_000)[:1_000_000]
    start = time.perf_counter()
    out = response_html(text, "A")
    assert time.perf_counter() - start < 3.0  # was 32 s to appear as a text box; 0.2 s here on one core
    assert 'class="response long collapsed"' in out and "Show all (1,000,000 characters)" in out
    assert "shown as plain text" in out and len(out) > len(text)  # all of it is there, past the limit as text
    short = response_html("short", "B")
    assert 'class="response"' in short and "show-all" not in short
    assert markdown_html("x" * (MARKDOWN_LIMIT + 10)).count("<pre") == 1


def test_prompt_messages_show_each_role() -> None:
    out = prompt_html([{"role": "system", "content": "Be <b>brief</b>"}, {"role": "user", "content": "**Hi**"}])
    assert '<div class="role">system</div>' in out and "&lt;b&gt;brief&lt;/b&gt;" in out
    assert "<strong>Hi</strong>" in out


@pytest.mark.parametrize(("order", "n", "ranks"), [
    ("BAC", 3, [2, 1, 3]),
    ("bac", 3, [2, 1, 3]),
    ("B > A > C", 3, [2, 1, 3]),
    ("B=A C", 3, [1, 1, 2]),
    ("C=A=B", 3, [1, 1, 1]),
    ("DCBA", 4, [4, 3, 2, 1]),
    (" ".join(["AB", "AA"] + [chr(ord("A") + i) for i in range(26)]), 28,
     [3 + i for i in range(26)] + [2, 1]),
])
def test_typed_order_gives_ranks(order: str, n: int, ranks: list[int]) -> None:
    assert ranks_from_order(order, n) == ranks


@pytest.mark.parametrize(("order", "message"), [
    ("BAD", "unknown: D; missing: C"),
    ("BAA", "given twice: A; missing: C"),
    ("BA", "missing: C"),
    ("", "missing: A, B, C"),
])
def test_a_bad_order_names_what_is_wrong(order: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        ranks_from_order(order, 3)


def test_word_diff_marks_changed_words_and_escapes_everything() -> None:
    from labeling_ui.render import DIFF_TOKENS, _tokens, diff_html

    text = "Use `sorted(xs)`,\n  then <b>print</b> it."
    assert "".join(_tokens(text)) == text  # tokens rejoin to the exact text
    out = diff_html("The cat sat on the mat.", "The dog sat on the mat!")
    assert "The <del>cat</del> sat on the mat<del>.</del>" in out
    assert "The <ins>dog</ins> sat on the mat<ins>!</ins>" in out
    evil = diff_html('<img src=x onerror="alert(1)"> hi', "<script>alert(2)</script> hi")
    assert "<img" not in evil and "<script" not in evil and "&lt;<ins>script&gt;" in evil
    assert "onerror=&quot;" in evil  # attribute quotes escaped as well
    assert "too long" in diff_html("w " * (DIFF_TOKENS + 1), "w")

