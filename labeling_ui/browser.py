"""What runs in the annotator's browser: keyboard shortcuts, "show all", synchronized scrolling, CSS.

Gradio runs no ``<script>`` inside components, so this is one script in the page head that
listens on the whole document (it keeps working as Gradio re-renders the components).

Keys (ignored while typing in a text field, and with Ctrl/Alt/Meta):

- two responses: ``1``/``a`` A is better, ``2``/``b`` B, ``3``/``t`` tie, ``4``/``x`` both bad;
- one response (thumbs task): ``u``/``+`` good, ``d``/``-`` bad;
- three or more: type the order, best first (``BAC``; ``=`` joins ties: ``B=A C``) and press
  Enter. The first letter that names a shown response moves the focus to the order box;
  in this mode response letters win over the keys below;
- ``e`` show / collapse every long response, ``f`` to the flags (Space ticks, Tab moves),
  ``s`` skip (to the reason box first when none is chosen), ``p`` previous label, ``n`` back
  to the current item. Score sliders and aspect ratings are reached with Tab and set with the
  arrow keys.

Each key's target is the first *visible* element of its list, so the same key can serve the
pairwise and the thumbs buttons. Expanded responses scroll together, at the same relative position.
"""

from __future__ import annotations

import json

from labeling_ui.render import CODE_CSS

# key -> element ids it clicks, the first visible one wins (the app gives its buttons these ids)
CLICK_KEYS: dict[str, list[str]] = {
    "1": ["vote-a"], "a": ["vote-a"],
    "2": ["vote-b"], "b": ["vote-b"],
    "3": ["vote-tie"], "t": ["vote-tie"],
    "4": ["vote-both-bad"], "x": ["vote-both-bad"],
    "u": ["thumb-up"], "+": ["thumb-up"],
    "d": ["thumb-down"], "-": ["thumb-down"],
    "p": ["previous"], "n": ["current"],
}


def key_hint(element_id: str) -> str:
    """The keys of a button, as shown on it: ``[1 a]``."""
    return "[" + " ".join(k for k, ids in CLICK_KEYS.items() if element_id in ids) + "]"


SCRIPT = """
<script>
(() => {
  const CLICK = __CLICK__;
  const visible = (el) => el && el.offsetParent !== null;
  // Keys go to fields that take text; a focused slider, radio or checkbox leaves letters to the shortcuts.
  const TEXT_INPUTS = ['text', 'search', 'number', 'password', 'email', 'url', 'tel'];
  const typing = (el) => !!el && (['TEXTAREA', 'SELECT'].includes(el.tagName) || el.isContentEditable
    || (el.tagName === 'INPUT' && TEXT_INPUTS.includes(el.type)));

  function toggleAll() {
    const boxes = [...document.querySelectorAll('.response.long')];
    const open = boxes.some((b) => b.classList.contains('collapsed'));
    boxes.forEach((b) => b.classList.toggle('collapsed', !open));
  }

  function typeOrder(key) {
    const box = document.querySelector('#rank-order textarea, #rank-order input');
    const names = [...document.querySelectorAll('.response')].filter(visible).map((r) => r.dataset.name);
    if (!visible(box) || !names.includes(key.toUpperCase())) return false;
    box.focus();
    box.value += key.toUpperCase();
    box.dispatchEvent(new Event('input', { bubbles: true }));
    return true;
  }

  document.addEventListener('keydown', (event) => {
    if (typing(event.target) || event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    if (key.length === 1 && /[a-z]/.test(key) && typeOrder(key)) { event.preventDefault(); return; }
    if (key === 'e') { event.preventDefault(); toggleAll(); return; }
    if (key === 'f') {
      const box = document.querySelector('#flags input');
      if (visible(box)) { event.preventDefault(); box.focus(); }
      return;
    }
    if (key === 's') {
      const reason = document.querySelector('#skip-reason input');
      event.preventDefault();
      if (reason && reason.value) document.getElementById('skip').click(); else if (reason) reason.focus();
      return;
    }
    const target = (CLICK[key] || []).map((id) => document.getElementById(id)).find(visible);
    if (target) { event.preventDefault(); target.click(); }
  });

  document.addEventListener('click', (event) => {
    const button = event.target.closest && event.target.closest('.show-all');
    if (button) button.closest('.response').classList.toggle('collapsed');
  });

  let syncing = false;  // a scroll we set fires its own event: do not echo it back
  document.addEventListener('scroll', (event) => {
    const body = event.target;
    if (syncing || !body.classList || !body.classList.contains('response-body')) return;
    const share = body.scrollTop / Math.max(1, body.scrollHeight - body.clientHeight);
    syncing = true;
    document.querySelectorAll('.response:not(.collapsed) .response-body').forEach((other) => {
      if (other !== body) other.scrollTop = share * (other.scrollHeight - other.clientHeight);
    });
    requestAnimationFrame(() => { syncing = false; });
  }, true);
})();
</script>
""".replace("__CLICK__", json.dumps(CLICK_KEYS))

# Sliders show no value until moved: the app marks unset ones with class "unscored" (see SCORE_MARKS_JS).
CSS = CODE_CSS + """
.response .response-body { overflow: auto; max-height: 70vh; }
.response.collapsed .response-body { max-height: 16em; overflow: hidden;
  mask-image: linear-gradient(to bottom, black 70%, transparent); }
.response .show-all { margin-top: .4em; font-size: .9em; text-decoration: underline; cursor: pointer; }
.response:not(.collapsed) .show-all::before { content: "Collapse / "; }
.md pre { overflow-x: auto; padding: .5em; background: #f6f8fa; }
.md pre.plain { white-space: pre-wrap; }
.prompt .role { font-weight: bold; text-transform: capitalize; margin-top: .5em; }
.unscored input[type=number] { visibility: hidden; }
#rank-order textarea, #rank-order input { text-transform: uppercase; font-family: monospace; }
.unscored input[type=range] { opacity: .35; }
.diff-sides { display: flex; gap: 1em; }
.diff-side { flex: 1; min-width: 0; }
pre.diff { white-space: pre-wrap; font-family: inherit; max-height: 50vh; overflow: auto; }
pre.diff del { background: #ffd7d5; }
pre.diff ins { background: #ccffd8; }
.diff-note { font-size: .9em; opacity: .8; }
"""

# Run in the browser whenever the hidden scores field changes: a slider whose score is null shows no value.
SCORE_MARKS_JS = """(raw) => {
  let scores = [];
  try { scores = JSON.parse(raw) || []; } catch (e) {}
  document.querySelectorAll('.score-slider').forEach((el, i) => el.classList.toggle('unscored', scores[i] == null));
}"""
