"""align: take a pretrained language model through SFT, reward modelling, DPO and PPO."""

__version__ = "0.1.0"
