"""GRPO's settings (language-model post-training), with the loss variants the field
compares selectable by name (``loss_variant``) or knob by knob."""

from __future__ import annotations

import dataclasses

from rlfleet.algorithms.grpo.loss import AGGREGATIONS, RATIO_LEVELS
from rlfleet.rl.config import ConfigError, closest
from rlfleet.rl.lm.config import LMConfig

# What each named variant sets; a knob given in the config wins over its variant.
# (DAPO's recipe also trains without the KL term: set kl_coef: 0 with it.)
VARIANTS: dict[str, dict[str, object]] = {
    # GRPO as most trainers run it: token-mean over the batch, std-normalised advantages
    "grpo": dict(advantage_std=True, loss_aggregation="token_mean", clip_param=0.2, clip_param_high=0.2,
                 ratio_level="token", dynamic_sampling=False, overlong_buffer=0),
    # Dr. GRPO (Liu et al. 2025): no std division, no length normalisation
    "dr_grpo": dict(advantage_std=False, loss_aggregation="constant", clip_param=0.2, clip_param_high=0.2,
                    ratio_level="token", dynamic_sampling=False, overlong_buffer=0),
    # DAPO (Yu et al. 2025): clip-higher, dynamic sampling, token-mean, soft overlong penalty
    # over the last quarter of the token budget
    "dapo": dict(advantage_std=True, loss_aggregation="token_mean", clip_param=0.2, clip_param_high=0.28,
                 ratio_level="token", dynamic_sampling=True, overlong_buffer="quarter"),
    # GSPO (Zheng et al. 2025): one length-normalised ratio per completion, narrow clip
    "gspo": dict(advantage_std=True, loss_aggregation="sequence_mean", clip_param=3e-4, clip_param_high=4e-4,
                 ratio_level="sequence", dynamic_sampling=False, overlong_buffer=0),
}
KL_MODES = ("loss", "reward")


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """The variant's knobs, every one resolved (algorithms/grpo/loss.py)."""

    variant: str
    advantage_std: bool
    aggregation: str
    clip_low: float
    clip_high: float
    ratio_level: str
    kl_mode: str
    dynamic_sampling: bool
    max_sampling_rounds: int
    overlong_buffer: int
    overlong_penalty: float


@dataclasses.dataclass
class GRPOConfig(LMConfig):
    algo_name = "grpo"

    group_size: int = 8
    """Completions per prompt; advantages are relative within the group."""
    loss_variant: str = "grpo"
    """grpo, dr_grpo, dapo or gspo: sets the knobs below that are left unset (None)."""
    clip_param: float | None = None  # type: ignore[assignment]
    """Lower clip range of the ratio (1 - clip_param); None: the variant's (0.2; GSPO 3e-4)."""
    clip_param_high: float | None = None
    """Upper clip range (1 + clip_param_high); None: the variant's (DAPO's clip-higher 0.28)."""
    advantage_std: bool | None = None
    """Divide advantages by their group's std; None: the variant's (Dr. GRPO: no)."""
    loss_aggregation: str | None = None
    """token_mean, sequence_mean or constant (algorithms/grpo/loss.py); None: the variant's."""
    ratio_level: str | None = None
    """token, or sequence (one ratio per completion, GSPO); None: the variant's."""
    kl_mode: str = "loss"
    """The KL to the reference as a loss term (``loss``), or subtracted from each
    completion's reward (``reward``: kl_coef x its summed log-ratio) before advantages."""
    dynamic_sampling: bool | None = None
    """Drop groups whose rewards are all equal and sample again until the batch holds as
    many groups as one round gives (DAPO); None: the variant's."""
    max_sampling_rounds: int = 4
    """Dynamic sampling: rounds of sampling at most per iteration (then train on what was kept)."""
    overlong_buffer: int | None = None
    """Tokens before the budget where DAPO's soft overlong penalty starts (0: none); None:
    the variant's (DAPO: a quarter of the budget)."""
    overlong_penalty: float = 1.0
    """The overlong penalty at the full token budget."""
    tis_cap: float | None = None
    """Truncated importance sampling for stale or mismatched samplers: the clipped ratio
    is taken to the policy as it is when training on the batch starts (recomputed), and
    each token's term is weighted by min(that policy / the sampler's, tis_cap). None: the
    ratio is to the sampler's log-probs, uncorrected."""

    def validate(self) -> None:
        if self.loss_variant not in VARIANTS:
            raise ConfigError(f"loss_variant must be one of {', '.join(VARIANTS)}, got {self.loss_variant!r}"
                              f"{closest(str(self.loss_variant), VARIANTS)}")
        super().validate()
        if self.group_size < 2:
            raise ConfigError(f"group_size must be >= 2 (advantages are relative within a group), got {self.group_size}")
        self.require_positive("clip_param_high", "max_sampling_rounds", "tis_cap")
        self.require_non_negative("overlong_buffer", "overlong_penalty")
        for name, allowed in (("loss_aggregation", AGGREGATIONS), ("ratio_level", RATIO_LEVELS), ("kl_mode", KL_MODES)):
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}"
                                  f"{closest(str(value), allowed)}")
        s = self.loss_settings(max_new_tokens=4)
        if s.ratio_level == "sequence" and s.aggregation != "sequence_mean":
            raise ConfigError(f"ratio_level sequence is one term per completion, averaged over completions: "
                              f"loss_aggregation {s.aggregation!r} does not apply (use sequence_mean)")

    def loss_settings(self, max_new_tokens: int) -> LossSettings:
        """The knobs in force: each set one, else the variant's."""
        variant = VARIANTS[self.loss_variant]

        def pick(name: str, own: object) -> object:
            return variant[name] if own is None else own

        clip_low = pick("clip_param", self.clip_param)
        # an explicit clip_param without clip_param_high is symmetric (GRPO's single knob)
        clip_high = self.clip_param_high if self.clip_param_high is not None else (
            self.clip_param if self.clip_param is not None else variant["clip_param_high"])
        buffer = pick("overlong_buffer", self.overlong_buffer)
        if buffer == "quarter":
            buffer = max(1, max_new_tokens // 4)
        return LossSettings(
            variant=self.loss_variant, advantage_std=bool(pick("advantage_std", self.advantage_std)),
            aggregation=str(pick("loss_aggregation", self.loss_aggregation)), clip_low=float(clip_low),
            clip_high=float(clip_high), ratio_level=str(pick("ratio_level", self.ratio_level)), kl_mode=self.kl_mode,
            dynamic_sampling=bool(pick("dynamic_sampling", self.dynamic_sampling)),
            max_sampling_rounds=self.max_sampling_rounds, overlong_buffer=int(buffer),  # type: ignore[arg-type]
            overlong_penalty=self.overlong_penalty)

    def algorithm_class(self) -> type:
        from rlfleet.algorithms.grpo.algorithm import GRPO

        return GRPO
