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
