"""CLIP back-end shared by every system: tensor-in embeddings and scores (:class:`CLIPScorer`), dataset filters.

transformers is imported lazily (only when a model is loaded).
"""

from adapt3d.clip.model import DEFAULT_CLIP_MODEL, CLIPScorer, clip_preprocess

__all__ = ["DEFAULT_CLIP_MODEL", "CLIPScorer", "clip_preprocess"]
