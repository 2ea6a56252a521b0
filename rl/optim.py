"""Adam and AdamW, written out: ``torch.optim`` imports ``torch._dynamo`` on first use,
which costs 0.7 s of start-up on a 2-core machine (a fifth of the time PPO needs to solve
CartPole). The update is the same as ``torch.optim.Adam`` (Kingma & Ba 2015,
bias-corrected), or ``torch.optim.AdamW`` with ``weight_decay`` > 0 (decoupled weight
decay, Loshchilov & Hutter 2019), done over all parameters at once with the fused kernel
or, where that is missing, the foreach kernels.

Like ``torch.optim.Adam``, every parameter counts its own steps: a parameter whose grad
is None in a step (a head unused by this loss) is skipped entirely, its moments and step
count unchanged, so its bias correction stays where torch's would be."""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch


class Adam:
    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        *,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        if weight_decay < 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, float(weight_decay)
        self.steps = [0] * len(self.params)  # per parameter, as torch.optim.Adam's state["step"]
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self._fused_ok = hasattr(torch, "_fused_adam_") and all(p.dtype == torch.float32 for p in self.params)
        self._sync_step_tensors()

    @property
    def step_count(self) -> int:
        """The most steps any parameter has taken (every parameter's count when all of
        them always get grads); ``steps`` holds each parameter's own count."""
        return max(self.steps, default=0)

    def _sync_step_tensors(self) -> None:
        """One float32 step tensor per parameter on its device (the fused kernel's
        ``state_steps``), equal to ``self.steps``; the kernel reads them, step() counts."""
        self._step_tensors = [
            torch.full((), float(n), dtype=torch.float32, device=p.device) for n, p in zip(self.steps, self.params)
        ]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        keep = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not keep:
            return
        if len(keep) == len(self.params):
            params, m, v, steps = self.params, self.exp_avg, self.exp_avg_sq, self._step_tensors
        else:
            # A head unused by this loss: only the parameters with grads step (and count).
            params = [self.params[i] for i in keep]
            m, v = [self.exp_avg[i] for i in keep], [self.exp_avg_sq[i] for i in keep]
            steps = [self._step_tensors[i] for i in keep]
        for i in keep:
            self.steps[i] += 1
        grads = [p.grad for p in params]
        if self.weight_decay:
            torch._foreach_mul_(params, 1.0 - self.lr * self.weight_decay)  # AdamW: decay before the update
        if self._fused_step(params, grads, m, v, steps):
            return
        beta1, beta2 = self.betas
        counts = [self.steps[i] for i in keep]
        torch._foreach_lerp_(m, grads, 1.0 - beta1)  # m = b1 m + (1 - b1) g
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, grads, grads, 1.0 - beta2)  # v = b2 v + (1 - b2) g^2
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, [math.sqrt(1.0 - beta2**n) for n in counts])
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(params, m, denom, [-self.lr / (1.0 - beta1**n) for n in counts])

    def _fused_step(self, params: list, grads: list, m: list, v: list, steps: list) -> bool:
        """The Adam update as one fused kernel (what ``torch.optim.Adam(fused=True)``
        calls), a tenth of the foreach path's launch overhead for small networks; False
        when this build has no fused kernel for these tensors. ``self.steps`` already
        counts this step; the step tensors catch up here."""
        if not self._fused_ok:
            return False
        try:
            torch._foreach_add_(steps, 1.0)
            torch._fused_adam_(
                params, grads, m, v, [], steps, amsgrad=False, lr=self.lr, beta1=self.betas[0], beta2=self.betas[1],
                weight_decay=0.0, eps=self.eps, maximize=False,
            )
        except (AttributeError, RuntimeError, NotImplementedError):
            self._fused_ok = False  # the step tensors are not read again
            return False
        return True

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": list(self.steps),
            "exp_avg": [t.detach().cpu().clone() for t in self.exp_avg],
            "exp_avg_sq": [t.detach().cpu().clone() for t in self.exp_avg_sq],
            "lr": self.lr,
            "betas": list(self.betas),
            "eps": self.eps,
            "weight_decay": self.weight_decay,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Accepts this format and the earlier one (one int "step" shared by every
        parameter). ``weight_decay`` stays the constructor's: it is a setting of the run
        (``--restore --set weight_decay=...`` must take effect), not state."""
        n = len(self.params)
        if len(state["exp_avg"]) != n or len(state["exp_avg_sq"]) != n:
            raise ValueError(f"optimiser state has {len(state['exp_avg'])} tensors, the module {n}")
        steps = [int(s) for s in state["steps"]] if "steps" in state else [int(state["step"])] * n
        if len(steps) != n:
            raise ValueError(f"optimiser state has {len(steps)} step counts, the module {n} parameters")
        self.steps = steps
        self.exp_avg = [t.to(p.device).clone() for t, p in zip(state["exp_avg"], self.params)]
        self.exp_avg_sq = [t.to(p.device).clone() for t, p in zip(state["exp_avg_sq"], self.params)]
        self.lr, self.betas, self.eps = float(state["lr"]), tuple(state["betas"]), float(state["eps"])
        self._sync_step_tensors()
