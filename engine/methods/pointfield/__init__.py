"""Point field (GPF, "Generalizable neural Point Field", ICLR 2024): neural points whose features come
from the source images in which each point is visible, log sampling around the point cloud's depth,
and a learned attention kernel over the K nearest points giving an SDF (NeuS opacity) and a colour.

Modules: :mod:`.config` (options), :mod:`.scene` (points, source images, caches of one scene),
:mod:`.model` (image encoder, aggregation kernel), :mod:`.render` (features, sampling, compositing),
:mod:`.method` (the trainer interface, growing and pruning, export, state).
"""
