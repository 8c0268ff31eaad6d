"""3D-DST: images with exact 3D annotations from CAD meshes via ControlNet (viewpoints, prompts, annotations, the
K-fold consistency filter and COCO export). The jobs are :mod:`adapt3d.pipelines.synth`, ``.kcf`` and
``.export_coco``."""
