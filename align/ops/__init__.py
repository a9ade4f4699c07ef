"""The math of alignment as pure functions, torch only: tests import these without loading a stage.

- ``logprobs``: per-token log-probs, entropy, KL of responses (PPO, DPO's check, eval);
- ``stats``: masked means and whitening, explained variance, win rate, a falling-trend check;
- ``ppo``: KL estimators, per-token rewards, GAE, clipped policy/value losses, adaptive KL;
- ``dpo``: the DPO loss table;
- ``adversarial``: FGM/PGD perturbations of input embeddings (normalised step, L2-ball projection).
"""
