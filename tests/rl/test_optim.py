import io

import pytest
import torch

from rlfleet.rl.optim import Adam


def test_adam_matches_torch_adam_step_for_step():
    torch.manual_seed(0)
    ours_model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    ref_model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    ref_model.load_state_dict(ours_model.state_dict())
    ours = Adam(ours_model.parameters(), lr=0.01, eps=1e-5)
    ref = torch.optim.Adam(ref_model.parameters(), lr=0.01, eps=1e-5)
    x = torch.randn(16, 3)
    for _ in range(5):
        for model, opt in ((ours_model, ours), (ref_model, ref)):
            opt.zero_grad()
            model(x).pow(2).sum().backward()
            opt.step()
    for a, b in zip(ours_model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_adam_state_round_trip_continues_identically():
    torch.manual_seed(1)
    model = torch.nn.Linear(2, 1)
    opt = Adam(model.parameters(), lr=0.1)
    x = torch.randn(8, 2)
    for _ in range(3):
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
    twin = torch.nn.Linear(2, 1)
    twin.load_state_dict(model.state_dict())
    twin_opt = Adam(twin.parameters(), lr=0.5)
    twin_opt.load_state_dict(opt.state_dict())
    assert twin_opt.lr == 0.1 and twin_opt.step_count == 3
    for m, o in ((model, opt), (twin, twin_opt)):
        o.zero_grad()
        m(x).sum().backward()
        o.step()
    torch.testing.assert_close(model.weight, twin.weight, rtol=0, atol=0)


# Two heads on one trunk; head "b" is left out of the loss (its grads stay None) in the
# middle steps, as an unused head is, then used again. torch.optim.Adam skips a parameter
# with grad None entirely (moments and step count unchanged), so each parameter's bias
# correction follows its own step count.
STEPS = 20
B_UNUSED = range(6, 13)


class TwoHeads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = torch.nn.Linear(3, 8)
        self.a = torch.nn.Linear(8, 2)
        self.b = torch.nn.Linear(8, 1)

    def loss(self, x, use_b):
        h = torch.tanh(self.trunk(x))
        loss = self.a(h).pow(2).sum()
        return loss + (self.b(h) - 1.0).pow(2).sum() if use_b else loss


def twins(seed):
    torch.manual_seed(seed)
    ours, ref = TwoHeads(), TwoHeads()
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def train_step(model, opt, x, t):
    opt.zero_grad()
    model.loss(x, use_b=t not in B_UNUSED).backward()
    opt.step()


def assert_params_close(ours, ref, where):
    for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=lambda m: f"{where}, {name}: {m}")


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "foreach"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01], ids=["adam", "adamw"])
def test_per_parameter_steps_match_torch_when_a_head_gets_no_grad(fused, weight_decay):
    ours_model, ref_model = twins(2)
    ours = Adam(ours_model.parameters(), lr=0.01, eps=1e-5, weight_decay=weight_decay)
    if weight_decay:
        ref = torch.optim.AdamW(ref_model.parameters(), lr=0.01, eps=1e-5, weight_decay=weight_decay)
    else:
        ref = torch.optim.Adam(ref_model.parameters(), lr=0.01, eps=1e-5)
    if not fused:
        ours._fused_ok = False
    elif not ours._fused_ok:
        pytest.skip("this torch build has no fused Adam kernel for these tensors")
    x = torch.randn(16, 3)
    for t in range(STEPS):
        train_step(ours_model, ours, x, t)
        train_step(ref_model, ref, x, t)
        if t in B_UNUSED:
            assert ours_model.b.weight.grad is None  # the case under test: grad None, not zero
        assert_params_close(ours_model, ref_model, f"step {t}")
    assert ours._fused_ok == fused
    assert ours.steps == [int(ref.state[p]["step"]) for p in ref_model.parameters()]
    assert ours.steps == [STEPS] * 4 + [STEPS - len(B_UNUSED)] * 2


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "foreach"])
def test_state_round_trip_mid_run_continues_identically(fused):
    model, _ = twins(3)
    opt = Adam(model.parameters(), lr=0.01, weight_decay=0.01)
    opt._fused_ok = opt._fused_ok and fused
    x = torch.randn(16, 3)
    save_at = 9  # inside the gap: the heads' step counts differ
    for t in range(save_at):
        train_step(model, opt, x, t)
    twin = TwoHeads()
    twin.load_state_dict(model.state_dict())
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    twin_opt = Adam(twin.parameters(), lr=0.5, weight_decay=0.01)  # lr comes from the state, the decay is the run's
    twin_opt._fused_ok = twin_opt._fused_ok and fused
    twin_opt.load_state_dict(torch.load(buffer, weights_only=True))
    assert twin_opt.steps == opt.steps == [save_at] * 4 + [save_at - 3] * 2
    assert (twin_opt.lr, twin_opt.weight_decay) == (0.01, 0.01)
    for t in range(save_at, STEPS):
        for m, o in ((model, opt), (twin, twin_opt)):
            train_step(m, o, x, t)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_old_format_state_dict_loads_as_every_parameter_at_that_step():
    model, _ = twins(4)
    opt = Adam(model.parameters(), lr=0.01)
    x = torch.randn(16, 3)
    for t in range(4):  # all parameters step (B_UNUSED starts later)
        train_step(model, opt, x, t)
    new = opt.state_dict()
    old = {k: v for k, v in new.items() if k not in ("steps", "weight_decay")}
    old["step"] = 4  # the earlier format: one global count, no weight decay
    twin = TwoHeads()
    twin.load_state_dict(model.state_dict())
    twin_opt = Adam(twin.parameters(), lr=0.5)
    twin_opt.load_state_dict(old)
    assert twin_opt.steps == [4] * 6 and twin_opt.weight_decay == 0.0
    assert twin_opt.state_dict().keys() == new.keys()
    for t in range(4, STEPS):
        for m, o in ((model, opt), (twin, twin_opt)):
            train_step(m, o, x, t)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
