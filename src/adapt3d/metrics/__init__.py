"""Evaluation metrics: CLIP text alignment, LPIPS (own AlexNet / VGG16 implementation), diversity, view
consistency, FID/KID with Inception (own TensorFlow-compatible implementation) or CLIP features, and the report
writers. See each module's docstring for formulas."""

from adapt3d.metrics.clip_metrics import (
    clip_score,
    clip_score_from_embeddings,
    directional_similarity,
    directional_similarity_from_embeddings,
    view_agreement,
    view_agreement_from_embeddings,
)
from adapt3d.metrics.diversity import intra_cluster_lpips, kmeans, mean_pairwise_distance
from adapt3d.metrics.fid import CLIPImageFeatures, compute_fid_kid, fid_kid_from_features
from adapt3d.metrics.inception import InceptionFeatures, InceptionWeightsNotFoundError, load_inception
from adapt3d.metrics.lpips import LPIPS, AlexNetFeatures, LPIPSWeightsNotFoundError, VGGFeatures, load_lpips
from adapt3d.metrics.view_consistency import (
    backproject,
    evaluate_view_consistency,
    reprojection_error,
    warp_to_view,
)

__all__ = [
    "clip_score",
    "clip_score_from_embeddings",
    "directional_similarity",
    "directional_similarity_from_embeddings",
    "view_agreement",
    "view_agreement_from_embeddings",
    "intra_cluster_lpips",
    "kmeans",
    "mean_pairwise_distance",
    "CLIPImageFeatures",
    "compute_fid_kid",
    "fid_kid_from_features",
    "InceptionFeatures",
    "InceptionWeightsNotFoundError",
    "load_inception",
    "LPIPS",
    "LPIPSWeightsNotFoundError",
    "VGGFeatures",
    "AlexNetFeatures",
    "load_lpips",
    "backproject",
    "evaluate_view_consistency",
    "reprojection_error",
    "warp_to_view",
]
