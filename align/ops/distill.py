"""Distillation divergences between a student's and a teacher's next-token distributions, torch only.

    python -c "import torch; from align.ops.distill import generalized_jsd; print(generalized_jsd(torch.zeros(1, 1, 2), torch.tensor([[[1.0986, 0.0]]]), beta=0.0))"

``generalized_jsd`` is GKD's divergence (https://arxiv.org/abs/2306.13649, Eq. 1-2) per token, with
TRL's convention at the ends: ``beta = 0`` is the forward KL(teacher || student) (mode-covering,
the classic token-level distillation), ``beta = 1`` the reverse KL(student || teacher)
(mode-seeking, used on the student's own samples), and ``0 < beta < 1``

    JSD_beta = beta KL(teacher || M) + (1 - beta) KL(student || M),   M = beta teacher + (1 - beta) student.

(JSD_beta itself tends to 0 at both ends; the ends are defined as the KLs, as TRL does.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float,
                    temperature: float = 1.0) -> torch.Tensor:
    """Per-token divergence ``(B, T)`` of logits ``(B, T, V)``, both divided by ``temperature`` first, float32.

    No ``temperature^2`` factor is applied (Hinton et al. scale gradients so; TRL does not either).
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if beta == 0.0:
        return _kl(log_t, log_s)
    if beta == 1.0:
        return _kl(log_s, log_t)
    log_m = torch.logsumexp(torch.stack([log_t + math.log(beta), log_s + math.log1p(-beta)]), dim=0)  # (B, T, V)
    return beta * _kl(log_t, log_m) + (1 - beta) * _kl(log_s, log_m)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dimension, from log-probabilities: ``sum_v p (log p - log q)``."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)
