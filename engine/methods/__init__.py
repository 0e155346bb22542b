"""The registry of representations: one :class:`MethodSpec` per method, read by everything else.

The CLI (train / eval / render / export / view / info), ``engine.load``, the viewer and the
trainer find methods here and talk to them only through the contract of :mod:`.base`. A method
package never imports another one. Adding a representation = one package + one ``register`` line
below (or a call to :func:`register` from user code: the spec may name classes directly).

>>> from engine import methods
>>> methods.available()
['gvgen', 'gvolume', 'pointfield', 'raygauss', 'shells']
>>> methods.get("raygauss").export_formats["ply"][:22]
'standard 3DGS .ply (x '
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path


def _resolve(ref):
    """A class/object, or ``"module:attr"`` imported on first use (keeps ``--help`` cheap)."""
    if not isinstance(ref, str):
        return ref
    mod, attr = ref.split(":")
    return getattr(importlib.import_module(mod), attr)


@dataclass
class MethodSpec:
    """One registry entry.

    Args:
        name: ``kernelight train NAME``.
        method: the :class:`~engine.methods.base.Method` subclass, or ``"module:Class"``.
        config: its :class:`~engine.methods.base.MethodConfig` subclass, or ``"module:Class"``
            (a module importing only dataclasses, so ``--help`` stays fast).
        description: one line for ``--help`` and ``kernelight info``.
        presets: ``{name: {option: value}}`` or ``"module:ATTR"`` (``--preset NAME``).
        export_formats: ``{format: one line}`` for ``kernelight export --format``.
        reads: file suffixes ``engine.load`` opens with this method's ``from_file``, each with a
            predicate ``path -> bool`` (or None: any file with that suffix), e.g. 3DGS ``.ply``.
    """

    name: str
    method: object
    config: object
    description: str = ""
    presets: object = None
    export_formats: dict = field(default_factory=dict)
    reads: dict = field(default_factory=dict)

    def method_class(self):
        return _resolve(self.method)

    def config_class(self):
        return _resolve(self.config)

    def preset_table(self) -> dict:
        return dict(_resolve(self.presets) or {}) if self.presets is not None else {}

    def preset(self, name: str) -> dict:
        from ..errors import ConfigError

        table = self.preset_table()
        if name not in table:
            have = ", ".join(sorted(table)) or "none"
            raise ConfigError(f"unknown preset {name!r} for {self.name}; available: {have}")
        return dict(table[name])


_REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec, replace: bool = False) -> MethodSpec:
    """Add a method to the registry (``replace=True`` to overwrite an entry of the same name)."""
    from ..errors import ConfigError

    if spec.name in _REGISTRY and not replace:
        raise ConfigError(f"method {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def available() -> list[str]:
    return sorted(_REGISTRY)


def specs() -> list[MethodSpec]:
    return [_REGISTRY[n] for n in available()]


def get(name: str) -> MethodSpec:
    from ..errors import ConfigError

    if name not in _REGISTRY:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name]


def get_method(name: str):
    """The method class registered under ``name``."""
    return get(name).method_class()


def get_preset(method: str, name: str) -> dict:
    """Option set ``name`` of ``method``."""
    return get(method).preset(name)


def make_config(name: str, options: dict | None = None):
    """The config of method ``name``: defaults overridden by ``options`` (checked and coerced)."""
    return get(name).config_class().from_options(dict(options or {}), method_name=name)


def reader_for(path) -> MethodSpec | None:
    """The method whose ``reads`` accepts the file ``path`` (None when no method reads it)."""
    path = Path(path)
    suffix = path.suffix.lower()
    for spec in specs():
        if suffix in spec.reads:
            pred = _resolve(spec.reads[suffix])
            if pred is None or pred(path):
                return spec
    return None


# ------------------------------------------------------------------------------------ the methods

register(MethodSpec(
    name="raygauss",
    method="engine.methods.raygauss.method:RayGaussMethod",
    config="engine.methods.raygauss.config:RayGaussConfig",
    description="volumetric Gaussians ray cast slab by slab through a BVH (RayGauss, WACV 2025)",
    presets="engine.methods.raygauss.presets:PRESETS",
    export_formats={"ply": "standard 3DGS .ply (x y z nx ny nz f_dc_* f_rest_* opacity scale_* rot_*); "
                           "density converted to opacity, SG lobes dropped"},
    reads={".ply": "engine.methods.raygauss.method:is_gaussian_ply"},
))

register(MethodSpec(
    name="shells",
    method="engine.methods.shells.method:ShellsMethod",
    config="engine.methods.shells.config:ShellsConfig",
    description="NeuS field with a learned kernel size rendered inside an extracted mesh band "
                "(Adaptive Shells, SIGGRAPH Asia 2023)",
    export_formats={"shells": "outer.ply, inner.ply and surface.ply (the SDF zero level set) in a folder"},
))

register(MethodSpec(
    name="gvolume",
    method="engine.methods.gvolume.method:GVolumeMethod",
    config="engine.methods.gvolume.config:GVolumeConfig",
    description="GaussianVolume: N^3 Gaussians anchored on a grid, fitted with the Candidate Pool Strategy "
                "(GVGEN, ECCV 2024)",
    presets="engine.methods.gvolume.config:PRESETS",
    export_formats={"ply": "standard 3DGS .ply of the active Gaussians (all N^3 once densification ended)",
                    "gdf": "Gaussian Distance Field: (N, N, N) float32 .npy of distances to the nearest centre"},
))

register(MethodSpec(
    name="pointfield",
    method="engine.methods.pointfield.method:PointFieldMethod",
    config="engine.methods.pointfield.config:PointFieldConfig",
    description="neural points with visibility-aware image features, log sampling around the point cloud and "
                "a learned attention kernel (GPF, ICLR 2024)",
    export_formats={"ply": "the points with confidence, colour and features (x y z red green blue confidence f_*)"},
))

register(MethodSpec(
    name="gvgen",
    method="engine.methods.gvgen.method:GVGenMethod",
    config="engine.methods.gvgen.config:GVGenConfig",
    description="GVGEN text-to-3D: GDF diffusion + attribute 3D U-Nets over GaussianVolumes, trained on a "
                "kernelight gvgen dataset (ECCV 2024)",
    presets="engine.methods.gvgen.config:PRESETS",
    export_formats={"ply": "standard 3DGS .ply of a generation (--caption)",
                    "gdf": "the generation's Gaussian Distance Field, (N, N, N) float32 .npy",
                    "generator": "a compact generator .pt (float16 networks) for kernelight generate --model"},
))
