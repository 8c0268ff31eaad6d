"""The adapt3d web studio: explore generators, run and watch jobs, browse run folders (``adapt3d studio``).

Modules: :mod:`~adapt3d.studio.server` (HTTP + JSON API), :mod:`~adapt3d.studio.jobs` (job processes, state,
progress), :mod:`~adapt3d.studio.runner` (the per-job watcher process), :mod:`~adapt3d.studio.forms` (forms from
config dataclasses, validation), :mod:`~adapt3d.studio.explore` (live renders), :mod:`~adapt3d.studio.files`
(safe paths, run folders, uploads). Nothing is imported here, so the runner process starts fast.
"""
