"""Adaptive Shells (Wang et al., SIGGRAPH Asia 2023): a NeuS field with a learned, spatially varying
kernel size, an inner and an outer shell mesh around its surface, and band-limited rendering.

Modules: :mod:`.config` (options), :mod:`.field` (hash-grid SDF + colour + kernel-size networks,
NeuS opacity), :mod:`.occupancy` (empty-space skipping), :mod:`.volume` (volumetric rendering),
:mod:`.extract` (shell meshes), :mod:`.render` (rendering inside the shells), :mod:`.method`
(the trainer interface).
"""
