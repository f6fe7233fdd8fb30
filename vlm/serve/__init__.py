"""Image-text retrieval service: an index folder (SQLite + faiss or Milvus) and a FastAPI server over it."""

from vlm.serve.backends import FaissBackend, FaissConfig, MilvusBackend, VectorBackend
from vlm.serve.index import Hit, IndexConfig, IndexFolderError, ItemIndex
from vlm.serve.store import Item, ItemStore

__all__ = [
    "FaissBackend", "FaissConfig", "Hit", "IndexConfig", "IndexFolderError", "Item", "ItemIndex", "ItemStore",
    "MilvusBackend", "VectorBackend",
]
