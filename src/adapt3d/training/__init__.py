"""GAN fine-tuning: losses, augmentation, layer freezing, schedules/EMA, run folder, data-parallel helpers, loop.

Lower layers only (models, data, export, cameras, utils); pipelines build on it. See
:mod:`adapt3d.training.loop` for the training step and :mod:`adapt3d.training.config` for every option.
"""
