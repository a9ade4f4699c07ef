"""Human labeling: annotators rank model responses in a Gradio app; labels feed ``align reward`` and ``align dpo``.

    align generate --model smollm2-135m-instruct --prompts examples/data/prompts_demo.jsonl --n 2 --out candidates.jsonl
    align label add-user alice --role annotator --password-file alice.pw
    align label import candidates.jsonl labels_per_item=2 --project demo
    align label serve --project demo                 # http://127.0.0.1:7860, log in as alice
    align label export --project demo --kind preference --out prefs.jsonl

Modules, from the database out:

- ``candidates``: read a candidates file through the dataset layer's readers;
- ``schemas``: pydantic shapes of what crosses a boundary (project config, candidate rows,
  votes), apart from the database tables;
- ``db``: SQLAlchemy tables and engine setup (SQLite in WAL mode by default, PostgreSQL by URL);
- ``passwords``: scrypt hashes with a per-user salt, constant-time comparison;
- ``store``: every read and write as one short transaction (leases, labels, users, sessions);
- ``logins``: failed-login back-off per user and per address, in front of Gradio's ``/login``;
- ``render``: prompts and responses as safe HTML (Markdown, highlighted code, long ones collapsed);
- ``browser``: the page's keyboard shortcuts, "show all", synchronized scrolling and CSS;
- ``agreement``: Cohen's kappa and Krippendorff's alpha, pure functions;
- ``export``: labels -> preference / ranking / rating rows that the dataset layer loads as they are;
- ``app``: the Gradio Blocks app, whose callbacks only read the request, validate, call the store;
- ``commands``: the ``align label`` subcommands;
- ``auto``: ``align label auto``, a judge's labels given by simulated annotators (see its docstring).

Importing this package imports neither Gradio nor SQLAlchemy.
"""

from labeling_ui.errors import LabelError, NotAllowed, UnknownProject

__all__ = ["LabelError", "NotAllowed", "UnknownProject"]
