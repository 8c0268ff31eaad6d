"""adapt3d: text-to-image diffusion models as teachers for 3D-aware generators."""

__version__ = "0.1.0"
