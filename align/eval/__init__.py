"""Evaluation of policies: ``align eval`` (``align.eval.stage``) and the pieces DPO's end-of-run check shares.

    align eval recipes/eval.yaml generation.num_prompts=16

- ``sampling``: left-padded generation with a seed, KL of sampled responses to a reference;
- ``metrics``: k1 KL, win rate with its standard error (torch only);
- ``curves``: reward and KL series from training runs' ``metrics.jsonl``, and the plots;
- ``stage``: ``run(EvalRecipe)``, which writes report.md, samples.jsonl and the PNG plots.

Importing this package imports nothing heavy.
"""
