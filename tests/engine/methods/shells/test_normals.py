"""Analytic normals of the shells field (``--normals analytic``): the SDF gradient written out from
the hash encoding's Jacobian, checked against autograd on the same field, and its parameter
gradients against a pure-torch field differentiated twice (create_graph)."""
import pytest
import torch
import torch.nn.functional as Fn

from engine.methods.shells.config import ShellsConfig
from engine.methods.shells.field import ShellField
from shaders.hashgrid_ref import hash_encode_reference


def _field(dtype=torch.float64, seed=0):
    cfg = ShellsConfig(hash_levels=4, hash_log2_size=10, hash_max_res=48, normals="analytic")
    f = ShellField(torch.tensor([[-1.0, -2.0, -1.0], [3.0, 2.0, 1.0]]), cfg, seed=seed).to(dtype)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():       # a field away from its initial sphere: every term of the chain rule matters
        f.table.copy_(torch.randn(f.table.shape, generator=g, dtype=dtype) * 0.05)
        f.sdf_l1.weight.copy_(torch.randn(f.sdf_l1.weight.shape, generator=g, dtype=dtype) * 0.1)
        f.sdf_l0.bias.copy_(torch.randn(f.sdf_l0.bias.shape, generator=g, dtype=dtype) * 0.01)
    x = (torch.rand(200, 3, generator=g, dtype=dtype) * 2 - 1) * 1.8 + torch.tensor([1.0, 0.0, 0.0], dtype=dtype)
    return f, x


def _reference_geometry(f: ShellField, x: torch.Tensor):
    """The same field in plain torch (reference encoding); grad f by autograd with create_graph."""
    x = x.clone().requires_grad_()
    p = f.normalise(x)
    enc = hash_encode_reference(p * 0.5 + 0.5, f.table, f.resolutions)
    out = f.sdf_l1(Fn.softplus(f.sdf_l0(torch.cat([enc, p], -1)), beta=100.0))
    sdf = (p.norm(dim=-1) - f.cfg.init_radius + out[:, 0]) * f.half_size
    grad, = torch.autograd.grad(sdf.sum(), x, create_graph=True)
    log_s = torch.clamp(f.log_s + out[:, 1], max=f.max_log_s)
    return sdf, grad, log_s, out[:, 2:]


def test_analytic_gradient_equals_autograd_of_the_sdf():
    f, x = _field()
    sdf, grad, log_s, feat = f.geometry_analytic(x)
    xr = x.clone().requires_grad_()
    s2, l2, f2 = f.geometry(xr)          # the Taichi encoding with its own x-gradient
    g2, = torch.autograd.grad(s2.sum(), xr)
    torch.testing.assert_close(sdf, s2, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(grad, g2, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(log_s, l2)
    torch.testing.assert_close(feat, f2)
    # not the sphere prior alone: the network's part of the gradient is large
    r = f.normalise(x)
    assert float((grad - r / r.norm(dim=-1, keepdim=True)).norm(dim=-1).mean()) > 0.05


def test_analytic_gradient_trains_every_geometry_parameter_as_double_backward_does():
    """A loss on the normals (eikonal, NeuS cos) and the SDF: the parameter gradients of the written-out
    chain rule + the Jacobian kernel's backward equal those of autograd's double backward through the
    pure-torch field."""
    f, x = _field(seed=3)
    g = torch.Generator().manual_seed(9)
    d = Fn.normalize(torch.randn(200, 3, generator=g, dtype=torch.float64), dim=-1)
    w = torch.randn(200, generator=g, dtype=torch.float64)

    def loss_of(sdf, grad, log_s, feat):
        return (((grad.norm(dim=-1) - 1) ** 2).mean() + ((grad * d).sum(-1) * w).sum() * 0.1
                + (sdf * w).sum() + (log_s * w).sum() * 0.01 + feat.sum() * 0.01)

    f.zero_grad(set_to_none=True)
    loss_of(*f.geometry_analytic(x)).backward()
    got = {k: p.grad.clone() for k, p in f.named_parameters() if p.grad is not None}
    f.zero_grad(set_to_none=True)
    loss_of(*_reference_geometry(f, x)).backward()
    ref = {k: p.grad.clone() for k, p in f.named_parameters() if p.grad is not None}
    assert set(got) == set(ref) >= {"table", "sdf_l0.weight", "sdf_l1.weight", "log_s"}
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=1e-9, rtol=1e-7, msg=k)
    assert float(got["table"].abs().sum()) > 0


def test_normals_option_selects_the_path():
    f, x = _field(dtype=torch.float32)
    f.cfg.normals = "fd"
    a = f.geometry_grad(x)[1]
    f.cfg.normals = "analytic"
    b = f.geometry_grad(x)[1]
    # the two agree where the field is smooth at the finite-difference scale (half a finest cell)
    cos = Fn.cosine_similarity(a, b, dim=-1)
    assert float(cos.median()) > 0.99 and not torch.equal(a, b)
    f.cfg.normals = "sobel"
    with pytest.raises(ValueError, match="normals"):
        f.geometry_grad(x)


def test_a_checkpoint_keeps_the_normals_it_was_trained_with():
    """The normals mode is part of the model: loading a checkpoint keeps its mode whatever the
    config says, and checkpoints from before the option (no key) load as finite differences."""
    import dataclasses

    from engine.methods.shells.method import ShellsMethod

    f, _ = _field(dtype=torch.float32)
    st = ShellsMethod(f.cfg, f).state_dict()
    assert st["normals"] == "analytic"
    fd_cfg = dataclasses.replace(f.cfg, normals="fd")
    assert ShellsMethod.from_state_dict(fd_cfg, st).cfg.normals == "analytic"
    st.pop("normals")
    assert ShellsMethod.from_state_dict(f.cfg, st).cfg.normals == "fd"


def test_a_checkpoint_keeps_its_hash_table_shape():
    """A bare checkpoint (no run folder config) whose table differs from the config's defaults loads
    with its own table shape."""
    import dataclasses

    from engine.errors import ConfigError
    from engine.methods.shells.method import ShellsMethod

    f, _ = _field(dtype=torch.float32)
    st = ShellsMethod(f.cfg, f).state_dict()
    big = dataclasses.replace(f.cfg, hash_log2_size=12, hash_levels=6)
    m = ShellsMethod.from_state_dict(big, st)
    assert (m.cfg.hash_levels, m.cfg.hash_log2_size) == (4, 10)
    assert torch.equal(m.field.table, f.table)
    st["field"] = dict(st["field"], table=torch.zeros(4, 1000, 2))
    with pytest.raises(ConfigError, match="power of two"):
        ShellsMethod.from_state_dict(f.cfg, st)
