"""SH location encoder: longitude/latitude -> spherical-harmonic features -> SIREN.

After Russwurm et al., "Geographic location encoding with spherical harmonics and sinusoidal
representation networks" (ICLR 2024, MarcCoru/locationencoder): a point on the globe is embedded
by the real SH up to degree ``l_max`` (``(l_max+1)**2`` features, standard convention) and a
SIREN (sine-activated MLP, ``w0 = 30`` on the first layer, Sitzmann et al. 2020 initialisation)
maps the features to ``out_dim`` outputs.

Coordinates: ``lonlat (..., 2)`` in degrees, longitude east of Greenwich in ``[-180, 180]``,
latitude in ``[-90, 90]``; the direction is ``(cos lat cos lon, cos lat sin lon, sin lat)``
(Z through the north pole, X through lon = lat = 0).

Worked example (fit a smooth function on the globe; the loss drops by > 100x in 300 steps,
see ``tests/engine/geometry/test_sh_encoder.py``)::

    import torch
    from engine.geometry.sh_encoder import SHLocationEncoder

    torch.manual_seed(0)
    lon = torch.rand(4096) * 360 - 180
    lat = torch.rad2deg(torch.asin(torch.rand(4096) * 2 - 1))      # uniform on the sphere
    lonlat = torch.stack([lon, lat], -1)
    lo, la = torch.deg2rad(lon), torch.deg2rad(lat)
    target = (torch.sin(2 * lo) * torch.cos(la) ** 2 + 0.5 * torch.sin(3 * la)).unsqueeze(-1)

    model = SHLocationEncoder(l_max=6, hidden=64, layers=2, out_dim=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(300):
        loss = torch.nn.functional.mse_loss(model(lonlat), target)
        opt.zero_grad(); loss.backward(); opt.step()
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .sh import check_convention, num_coeffs, sh_basis


def lonlat_to_dirs(lonlat: torch.Tensor) -> torch.Tensor:
    """``(..., 2)`` longitude/latitude in degrees -> unit directions ``(..., 3)`` (see module doc)."""
    lonlat = torch.as_tensor(lonlat)
    if lonlat.shape[-1] != 2:
        raise ValueError(f"lonlat must have shape (..., 2) (degrees), got {tuple(lonlat.shape)}")
    if not lonlat.is_floating_point():
        lonlat = lonlat.to(torch.get_default_dtype())
    lon, lat = torch.deg2rad(lonlat).unbind(-1)
    cl = torch.cos(lat)
    return torch.stack([cl * torch.cos(lon), cl * torch.sin(lon), torch.sin(lat)], -1)


class SineLayer(nn.Module):
    """``sin(w0 * (W x + b))`` with the SIREN initialisation.

    First layer: ``W ~ U(-1/n, 1/n)``; later layers: ``W ~ U(-sqrt(6/n)/w0, sqrt(6/n)/w0)``
    (``n`` = fan-in), which keeps pre-activations ~ U(-sqrt 6, sqrt 6)-like across depth.
    """

    def __init__(self, in_features: int, out_features: int, w0: float, is_first: bool):
        super().__init__()
        self.w0 = float(w0)
        self.linear = nn.Linear(in_features, out_features)
        bound = 1.0 / in_features if is_first else math.sqrt(6.0 / in_features) / self.w0
        with torch.no_grad():
            self.linear.weight.uniform_(-bound, bound)
            self.linear.bias.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.w0 * self.linear(x))


class SHLocationEncoder(nn.Module):
    """lon/lat (degrees) -> SH features up to ``l_max`` -> SIREN -> ``out_dim`` values.

    Args:
        l_max: SH degree (inclusive); ``(l_max+1)**2`` features.
        hidden: width of the hidden sine layers.
        layers: number of sine layers (>= 1); a final linear layer maps to ``out_dim``.
        out_dim: output size.
        w0_first: SIREN frequency of the first layer (30, as in SIREN and the SH encoder paper).
        w0: frequency of the later sine layers (30 with the scaled init, as in SIREN).
        convention: SH convention of the features (``"standard"``).

    ``forward(lonlat (..., 2)) -> (..., out_dim)``; :meth:`features` gives the SH embedding alone.
    """

    def __init__(self, l_max: int = 10, hidden: int = 64, layers: int = 2, out_dim: int = 1,
                 w0_first: float = 30.0, w0: float = 30.0, convention: str = "standard"):
        super().__init__()
        if l_max < 0 or hidden < 1 or layers < 1 or out_dim < 1:
            raise ValueError(f"invalid SHLocationEncoder sizes: l_max={l_max}, hidden={hidden}, "
                             f"layers={layers}, out_dim={out_dim}")
        self.l_max = int(l_max)
        self.convention = check_convention(convention)
        self.num_features = num_coeffs(l_max)
        sizes = [self.num_features] + [hidden] * layers
        self.net = nn.Sequential(*[
            SineLayer(sizes[i], sizes[i + 1], w0_first if i == 0 else w0, is_first=(i == 0))
            for i in range(layers)
        ])
        self.head = nn.Linear(hidden, out_dim)
        bound = math.sqrt(6.0 / hidden) / w0
        with torch.no_grad():
            self.head.weight.uniform_(-bound, bound)
            self.head.bias.zero_()

    def features(self, lonlat: torch.Tensor) -> torch.Tensor:
        """SH embedding ``(..., (l_max+1)**2)`` of ``lonlat (..., 2)`` (degrees)."""
        dirs = lonlat_to_dirs(lonlat).to(self.head.weight.dtype)
        return sh_basis(dirs, self.l_max, self.convention)

    def forward(self, lonlat: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(self.features(lonlat)))
