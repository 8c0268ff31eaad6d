"""Export layer: images (PNG/JPEG grids, depth maps, contact sheets), videos (mp4/gif), meshes, and generator state
dicts for EG3D/DATID-3D scripts (:mod:`adapt3d.export.state_dict`).

Value conventions: generator images are float ``(B, C, H, W)`` in ``[-1, 1]``; float images in ``[0, 1]``;
everything written to disk is uint8 ``(H, W, C)``. Every writer is atomic (see :mod:`adapt3d.utils.io`).
"""

from adapt3d.export.images import (
    contact_sheet,
    depth_to_image,
    label_images,
    make_grid,
    save_grid,
    save_image,
    to_uint8,
    turbo_colormap,
)
from adapt3d.export.mesh import MESH_EXTENSIONS, density_grid, extract_mesh, grid_coordinates, save_mesh
from adapt3d.export.video import VIDEO_EXTENSIONS, read_video, read_video_frame_count, write_video

__all__ = [
    "to_uint8",
    "make_grid",
    "save_image",
    "save_grid",
    "depth_to_image",
    "turbo_colormap",
    "label_images",
    "contact_sheet",
    "write_video",
    "read_video",
    "read_video_frame_count",
    "VIDEO_EXTENSIONS",
    "extract_mesh",
    "density_grid",
    "grid_coordinates",
    "save_mesh",
    "MESH_EXTENSIONS",
]
