"""engine.train.optim.adam: fused where torch has it, the same update as the default Adam, and
checkpoints of either kind load into the other."""
import torch

from engine.train.optim import adam, fused_supported


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(4, 5, generator=g)), torch.nn.Parameter(torch.randn(7, generator=g))]


def _run(opt, params, steps=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()


def test_fused_on_cpu_and_same_update():
    a, b = _params(), _params()
    groups = lambda ps: [{"name": "x", "params": [ps[0]], "lr": 1e-2}, {"name": "y", "params": [ps[1]], "lr": 3e-3}]
    fa = adam(groups(a), lr=0.0, betas=(0.9, 0.99), eps=1e-15)
    ref = torch.optim.Adam(groups(b), lr=0.0, betas=(0.9, 0.99), eps=1e-15, foreach=False)
    assert fa.defaults["fused"] is True and not ref.defaults.get("fused")
    _run(fa, a)
    _run(ref, b)
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-6)
    # a checkpoint of the default implementation continues in the fused one, and back
    fa2 = adam([{"name": "x", "params": [b[0]], "lr": 1e-2}, {"name": "y", "params": [b[1]], "lr": 3e-3}], lr=0.0,
               betas=(0.9, 0.99), eps=1e-15)
    fa2.load_state_dict(ref.state_dict())
    _run(fa, a, seed=2)
    _run(fa2, b, seed=2)
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-6)
    plain = torch.optim.Adam([{"params": [torch.nn.Parameter(torch.zeros(4, 5))]},
                              {"params": [torch.nn.Parameter(torch.zeros(7))]}])
    plain.load_state_dict(fa.state_dict())
    assert len(plain.state) == 2


def test_not_fused_where_unsupported():
    assert not fused_supported([])
    assert not fused_supported([torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2, device="meta"))])
    opt = adam([torch.nn.Parameter(torch.zeros(3))], lr=1e-3, fused=False)
    assert not opt.defaults["fused"]
