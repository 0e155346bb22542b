"""kernelight's interactive web viewer, built on viser (``kernelight view PATH``).

Modules (import them directly; this package imports nothing heavy on its own):

* :mod:`viewer.app` — :class:`~viewer.app.ViewerApp` (server, panels, tools), ``ViewerOptions``
* :mod:`viewer.scene` — what is shown: any method's run / checkpoint, a 3DGS .ply, or a mesh
* :mod:`viewer.render_panel` — per-client render workers, newest-request-only, adaptive resolution
* :mod:`engine.kernels` — renders run on the Taichi (main) thread through the engine's kernel queue
* :mod:`viewer.camera_convert` — viser camera <-> engine ``Cameras``
* :mod:`viewer.frustums`, :mod:`viewer.camera_path_panel`, :mod:`viewer.geodesic_tool`,
  :mod:`viewer.sh_tool` — training cameras, camera paths, heat geodesics, spherical harmonics
* :mod:`viewer.training` — the live view for ``kernelight train ... --viewer``
"""
