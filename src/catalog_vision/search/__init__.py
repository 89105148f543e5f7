"""Similarity search over a model's embeddings: a faiss index per model and catalog, built from
its predictions table (:mod:`.build`), and top-k queries by image id or new image (:mod:`.store`,
:mod:`.jobs`)."""

from .ann import IndexParams
from .jobs import build_index, index_folder, similar
from .store import SimilarityIndex, UnknownImage, index_dir

__all__ = ["IndexParams", "SimilarityIndex", "UnknownImage", "build_index", "index_dir", "index_folder", "similar"]
