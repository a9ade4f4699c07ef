"""Training-data augmentation for ``align augment``: what one augmented row is made of.

- ``edits``: word dropout, neighbour swaps and synonym replacement, seeded per text (no downloads);
- ``rewrite``: paraphrase and back-translation sampled from a causal LM through ``align.sampling``;
- ``rows``: where a field's texts sit in a record, provenance, and the eval-prompt check.
"""
