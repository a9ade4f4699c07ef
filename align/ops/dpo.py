"""DPO loss variants as small functions, chosen by name from ``LOSSES``.

    python -c "import torch; from align.ops.dpo import *; print(dpo_loss(PairLogps.of([-1.], [-3.]), ['sigmoid'], beta=0.1))"

Every variant reads the same per-pair quantities (``PairLogps``: summed completion
log-probs of the policy and the reference, and completion lengths) and returns a
per-pair loss ``(B,)``; ``dpo_loss`` weights, sums and averages over pairs. Notation:

    h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))     # chosen minus rejected log-ratio

and the implicit rewards are ``beta * (log pi(y) - log pi_ref(y))``. The reference-free losses
(``REFERENCE_FREE``: simpo, orpo, sft) read no reference log-probs. Torch only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class PairLogps:
    """Per-pair sums over completion tokens, each ``(B,)``.

    ``*_tokens`` count the scored completion tokens (float); length-normalised variants
    divide by them, clamped to at least 1 so an empty completion gives no NaN.
    """

    chosen: torch.Tensor
    rejected: torch.Tensor
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor

    @classmethod
    def of(cls, chosen, rejected, ref_chosen=None, ref_rejected=None, chosen_tokens=None, rejected_tokens=None):  # noqa: ANN001, ANN206
        """Build from lists or tensors; reference log-probs default to 0, token counts to 1 (for hand checks)."""
        chosen = torch.as_tensor(chosen, dtype=torch.float32)
        rejected = torch.as_tensor(rejected, dtype=torch.float32)

        def _or(value, fill: float) -> torch.Tensor:  # noqa: ANN001
            return torch.full_like(chosen, fill) if value is None else torch.as_tensor(value, dtype=torch.float32)

        return cls(chosen, rejected, _or(ref_chosen, 0.0), _or(ref_rejected, 0.0), _or(chosen_tokens, 1.0),
                   _or(rejected_tokens, 1.0))

    @property
    def chosen_logratios(self) -> torch.Tensor:
        return self.chosen - self.ref_chosen

    @property
    def rejected_logratios(self) -> torch.Tensor:
        return self.rejected - self.ref_rejected

    @property
    def h(self) -> torch.Tensor:
        """Chosen minus rejected log-ratio, the DPO logit before ``beta``."""
        return self.chosen_logratios - self.rejected_logratios


def sigmoid_loss(p: PairLogps, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """DPO (https://arxiv.org/abs/2305.18290, Eq. 7): ``-log sigmoid(beta * h)``."""
    return -F.logsigmoid(beta * p.h)


def conservative_loss(p: PairLogps, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """cDPO (https://ericmitchell.ai/cdpo.pdf): labels flipped with probability ``eps``, as a soft target:
    ``-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)``. Its optimum is finite: ``beta h = log((1-eps)/eps)``."""
    eps = label_smoothing
    return -(1 - eps) * F.logsigmoid(beta * p.h) - eps * F.logsigmoid(-beta * p.h)


def robust_loss(p: PairLogps, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """rDPO (https://arxiv.org/abs/2403.00409, Eq. 8): unbiased under label noise ``eps < 1/2``:
    ``((1 - eps) (-log sigmoid(beta h)) - eps (-log sigmoid(-beta h))) / (1 - 2 eps)``."""
    eps = label_smoothing
    return ((1 - eps) * -F.logsigmoid(beta * p.h) - eps * -F.logsigmoid(-beta * p.h)) / (1 - 2 * eps)


def hinge_loss(p: PairLogps, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """SLiC (https://arxiv.org/abs/2305.10425): ``max(0, 1 - beta * h)``."""
    return torch.relu(1 - beta * p.h)


def ipo_loss(p: PairLogps, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """IPO (https://arxiv.org/abs/2310.12036, Eq. 17) with ``beta`` as tau: ``(h_avg - 1 / (2 beta))^2``.

    ``h_avg`` uses per-token log-ratios (each side divided by its completion length), as TRL
    does and the IPO authors confirmed: the summed ``h`` would make the target length-dependent.
    """
    h_avg = p.chosen_logratios / p.chosen_tokens.clamp(min=1) - p.rejected_logratios / p.rejected_tokens.clamp(min=1)
    return (h_avg - 1 / (2 * beta)) ** 2


def sft_loss(p: PairLogps, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """NLL of the chosen completion per token, ``-log pi(y_w) / |y_w|``; combined with ``sigmoid`` it is the
    DPO+SFT (RPO, https://arxiv.org/abs/2404.19733, Eq. 3) objective that keeps chosen log-probs from falling."""
    return -p.chosen / p.chosen_tokens.clamp(min=1)


def simpo_loss(p: PairLogps, beta: float, label_smoothing: float = 0.0, gamma: float = 0.5) -> torch.Tensor:
    """SimPO (https://arxiv.org/abs/2405.14734, Eq. 6), reference-free: the reward is the length-normalised
    log-prob, ``-log sigmoid(beta (log pi(y_w)/|y_w| - log pi(y_l)/|y_l|) - gamma)``."""
    margin = p.chosen / p.chosen_tokens.clamp(min=1) - p.rejected / p.rejected_tokens.clamp(min=1)
    return -F.logsigmoid(beta * margin - gamma)


def log_odds(mean_logp: torch.Tensor) -> torch.Tensor:
    """``log(p / (1 - p))`` of ``p = exp(mean_logp)``, as ``x - log(-expm1(x))``.

    ``mean_logp`` is clamped to at most -1e-6 (p < 1), where ``1 - p`` would be 0 and the odds infinite.
    """
    x = mean_logp.clamp(max=-1e-6)
    return x - torch.log(-torch.expm1(x))


def orpo_loss(p: PairLogps, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """ORPO (https://arxiv.org/abs/2403.07691, Eq. 6-7), reference-free, ``beta`` as lambda: the chosen NLL per
    token plus ``-beta log sigmoid(log odds(y_w) - log odds(y_l))``, odds of the per-token mean probability."""
    chosen_mean = p.chosen / p.chosen_tokens.clamp(min=1)
    rejected_mean = p.rejected / p.rejected_tokens.clamp(min=1)
    return -chosen_mean - beta * F.logsigmoid(log_odds(chosen_mean) - log_odds(rejected_mean))


LossFn = Callable[..., torch.Tensor]

LOSSES: dict[str, LossFn] = {
    "sigmoid": sigmoid_loss,
    "conservative": conservative_loss,
    "robust": robust_loss,
    "hinge": hinge_loss,
    "ipo": ipo_loss,
    "sft": sft_loss,
    "simpo": simpo_loss,
    "orpo": orpo_loss,
}
SMOOTHED_LOSSES = frozenset({"conservative", "robust"})  # the ones that read label_smoothing
REFERENCE_FREE = frozenset({"simpo", "orpo", "sft"})  # the ones that read no reference log-probs


def get_loss(name: str) -> LossFn:
    if name not in LOSSES:
        raise ValueError(f"unknown DPO loss {name!r}; expected one of {', '.join(LOSSES)}")
    return LOSSES[name]


def dpo_loss(
    pairs: PairLogps,
    names: list[str],
    beta: float,
    weights: list[float] | None = None,
    label_smoothing: float = 0.0,
    simpo_gamma: float = 0.5,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``sum_k weights[k] * mean_pairs(LOSSES[names[k]])``: the scalar loss and each term's mean (for logging).

    ``simpo_gamma`` is read by ``simpo`` only.
    """
    weights = [1.0] * len(names) if weights is None else weights
    if len(weights) != len(names):
        raise ValueError(f"loss_weights has {len(weights)} entries but loss has {len(names)}: {weights} vs {names}")
    extra = {"simpo": {"gamma": simpo_gamma}}
    terms = {name: get_loss(name)(pairs, beta, label_smoothing, **extra.get(name, {})).mean() for name in names}
    total = sum(weight * terms[name] for name, weight in zip(names, weights))
    return total, terms


def reward_metrics(pairs: PairLogps, beta: float) -> dict[str, torch.Tensor]:
    """Implicit rewards ``beta * log-ratio`` and their accuracy / margin, per pair ``(B,)``, detached."""
    chosen = beta * pairs.chosen_logratios.detach()
    rejected = beta * pairs.rejected_logratios.detach()
    return {
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/accuracies": (chosen > rejected).float(),
        "rewards/margins": chosen - rejected,
        "logps/chosen": pairs.chosen.detach(),
        "logps/rejected": pairs.rejected.detach(),
    }
