"""Embedding-space adversarial perturbations as pure functions, torch only.

    python -c "import torch; from align.ops.adversarial import fgm_delta; print(fgm_delta(torch.tensor([[[3.0, 4.0]]]), 1.0))"

Every sequence (row ``b`` of a ``(B, T, H)`` tensor) has its own L2 ball of radius ``epsilon``
over all its token embeddings together, as in adversarial training for text classification
(Miyato et al., https://arxiv.org/abs/1605.07725, Eq. 5):

- FGM: ``delta = epsilon * g / ||g||_2``, one step along the loss gradient ``g`` of the
  embedding output;
- PGD (Madry et al., https://arxiv.org/abs/1706.06083, Eq. 2, with the L2 norm):
  ``delta <- Proj_eps(delta + alpha * g / ||g||_2)``, repeated, ``g`` taken at ``delta`` each time.

Padded positions get a zero gradient (no loss depends on them), so they stay unperturbed.
"""

from __future__ import annotations

import torch

# A row whose gradient is exactly zero (no loss term reads it) gets a zero direction, not 0/0.
_TINY = 1e-12


def _row_norms(x: torch.Tensor) -> torch.Tensor:
    """L2 norm of each row over every dimension but the first, float32, shaped to broadcast: (B, 1, ..., 1)."""
    norms = x.float().flatten(1).norm(dim=1)  # (B,)
    return norms.view(-1, *([1] * (x.dim() - 1)))


def l2_normalize(grad: torch.Tensor) -> torch.Tensor:
    """``g / ||g||_2`` per row (B, T, H) -> (B, T, H); a zero row stays zero (its norm is clamped to 1e-12)."""
    return (grad.float() / _row_norms(grad).clamp(min=_TINY)).to(grad.dtype)


def fgm_delta(grad: torch.Tensor, epsilon: float) -> torch.Tensor:
    """FGM perturbation (B, T, H): norm ``epsilon`` per row, along the gradient ``grad`` (B, T, H)."""
    return epsilon * l2_normalize(grad)


def project_l2(delta: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Project each row of ``delta`` (B, T, H) into the L2 ball of radius ``epsilon``: rows inside are unchanged."""
    scale = (epsilon / _row_norms(delta).clamp(min=_TINY)).clamp(max=1.0)  # (B, 1, 1)
    return (delta.float() * scale).to(delta.dtype)


def pgd_step(delta: torch.Tensor, grad: torch.Tensor, alpha: float, epsilon: float) -> torch.Tensor:
    """One PGD ascent step: ``Proj_eps(delta + alpha * g / ||g||_2)``; all (B, T, H)."""
    return project_l2(delta + alpha * l2_normalize(grad), epsilon)
