"""GVGEN (ECCV 2024): text-to-3D by coarse-to-fine generation of GaussianVolumes.

Modules: ``text`` (offline caption encoders), ``dataset`` / ``primitives`` (the training set built
with the engine: ``kernelight gvgen dataset``), plus the generator's own modules.
"""
