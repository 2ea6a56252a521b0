"""Adam, written out: ``torch.optim`` imports ``torch._dynamo`` on first use, which costs
0.7 s of start-up on a 2-core machine (a fifth of the time PPO needs to solve CartPole).
The update is the same as ``torch.optim.Adam`` (Kingma & Ba 2015, bias-corrected), done
with the foreach kernels over all parameters at once."""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch


class Adam:
    def __init__(
        self, params: Iterable[torch.nn.Parameter], *, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.betas, self.eps = lr, betas, eps
        self.step_count = 0
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self._fused_ok = hasattr(torch, "_fused_adam_") and all(p.dtype == torch.float32 for p in self.params)
        self._step_tensor = torch.zeros((), dtype=torch.float32, device=self.params[0].device if self.params else "cpu")

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        params = [p for p in self.params if p.grad is not None]
        if len(params) != len(self.params):
            # Rare (a head unused by this loss): fall back to the parameters that have grads.
            keep = [i for i, p in enumerate(self.params) if p.grad is not None]
            m, v = [self.exp_avg[i] for i in keep], [self.exp_avg_sq[i] for i in keep]
        else:
            m, v = self.exp_avg, self.exp_avg_sq
        grads = [p.grad for p in params]
        beta1, beta2 = self.betas
        self.step_count += 1
        if self._fused_step(params, grads, m, v):
            return
        torch._foreach_lerp_(m, grads, 1.0 - beta1)  # m = b1 m + (1 - b1) g
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, grads, grads, 1.0 - beta2)  # v = b2 v + (1 - b2) g^2
        bias1 = 1.0 - beta1**self.step_count
        bias2 = 1.0 - beta2**self.step_count
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, math.sqrt(bias2))
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(params, m, denom, -self.lr / bias1)

    def _fused_step(self, params: list, grads: list, m: list, v: list) -> bool:
        """The same update as one fused kernel (what ``torch.optim.Adam(fused=True)`` calls),
        a tenth of the foreach path's launch overhead for small networks; False when this
        build has no fused kernel for these tensors."""
        if not self._fused_ok:
            return False
        steps = [self._step_tensor] * len(params)
        self._step_tensor.fill_(float(self.step_count))
        try:
            torch._fused_adam_(
                params, grads, m, v, [], steps, amsgrad=False, lr=self.lr, beta1=self.betas[0], beta2=self.betas[1],
                weight_decay=0.0, eps=self.eps, maximize=False,
            )
        except (AttributeError, RuntimeError, NotImplementedError):
            self._fused_ok = False
            self.step_count -= 1  # the foreach path counts this step again
            return False
        return True

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step_count,
            "exp_avg": [t.detach().cpu().clone() for t in self.exp_avg],
            "exp_avg_sq": [t.detach().cpu().clone() for t in self.exp_avg_sq],
            "lr": self.lr,
            "betas": list(self.betas),
            "eps": self.eps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["exp_avg"]) != len(self.params):
            raise ValueError(f"optimiser state has {len(state['exp_avg'])} tensors, the module {len(self.params)}")
        self.step_count = int(state["step"])
        device = self.params[0].device if self.params else "cpu"
        self.exp_avg = [t.to(device).clone() for t in state["exp_avg"]]
        self.exp_avg_sq = [t.to(device).clone() for t in state["exp_avg_sq"]]
        self.lr, self.betas, self.eps = float(state["lr"]), tuple(state["betas"]), float(state["eps"])
