"""GAN inversion for tri-plane generators: photo -> (latent, camera), optional pivotal tuning, and rendering an
inverted latent through any generator of the same architecture (DATID-3D's manipulated 3D reconstruction).

- :mod:`~adapt3d.inversion.images`: read any image (size, aspect, RGB / RGBA / greyscale) into a target;
- :mod:`~adapt3d.inversion.camera_io`: camera files (EG3D label json / npy) and differentiable orbit cameras;
- :mod:`~adapt3d.inversion.losses`: LPIPS / MSE / CLIP-image reconstruction losses with a stated fallback;
- :mod:`~adapt3d.inversion.projector`: W / W+ projection with noise regularisation and camera refinement;
- :mod:`~adapt3d.inversion.camera_search`: camera estimation by grid search + joint refinement;
- :mod:`~adapt3d.inversion.pti`: pivotal tuning with a locality regulariser;
- :mod:`~adapt3d.inversion.latent_file`: ``latent.pt`` / ``latent.json`` and the architecture check;
- :mod:`~adapt3d.inversion.render_latent`: images, views, video, mesh and comparison of one latent.
"""

from adapt3d.inversion.camera_io import OrbitCamera, load_camera_file
from adapt3d.inversion.camera_search import CameraSearchConfig, CameraSearchResult, search_camera
from adapt3d.inversion.images import ImageReadError, load_target_image, read_image
from adapt3d.inversion.latent_file import (LatentCode, LatentFileError, LatentMismatchError, architecture_of,
                                           check_architecture, load_latent, save_latent)
from adapt3d.inversion.losses import ReconstructionLoss, make_reconstruction_loss, psnr
from adapt3d.inversion.projector import ProjectionResult, ProjectorConfig, project, use_noise, w_statistics
from adapt3d.inversion.pti import PTIConfig, PTIResult, pivotal_tuning
from adapt3d.inversion.render_latent import RenderLatentConfig, RenderLatentResult, render_latent

__all__ = ["OrbitCamera", "load_camera_file", "CameraSearchConfig", "CameraSearchResult", "search_camera",
           "ImageReadError", "load_target_image", "read_image", "LatentCode", "LatentFileError",
           "LatentMismatchError", "architecture_of", "check_architecture", "load_latent", "save_latent",
           "ReconstructionLoss", "make_reconstruction_loss", "psnr", "ProjectionResult", "ProjectorConfig", "project",
           "use_noise", "w_statistics", "PTIConfig", "PTIResult", "pivotal_tuning", "RenderLatentConfig",
           "RenderLatentResult", "render_latent"]
