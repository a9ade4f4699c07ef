"""Libraries of ``align eval`` (``align.stages.eval``) and DPO's end-of-run check.

    align eval recipes/eval.yaml generation.num_prompts=16

- ``responses``: KL of sampled responses to a reference, held-out prompts, report table cells;
- ``curves``: reward and KL series from training runs' ``metrics.jsonl``, and the plots.
- ``perplexity``: perplexity on held-out documents (``align pretrain``).

Sampling is ``align.sampling``; win rate and the other numbers are ``align.ops``. Importing this
package imports nothing heavy; it never imports a stage.
"""
