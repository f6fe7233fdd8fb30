"""Image-text retrieval service: an index folder (SQLite + faiss or Milvus) and a FastAPI server over it."""

from vlm.lazy import lazy_attributes

__getattr__ = lazy_attributes(globals(), {
    "FaissBackend": "vlm.serve.backends", "FaissConfig": "vlm.serve.backends", "Hit": "vlm.serve.index",
    "IndexConfig": "vlm.serve.index", "IndexFolderError": "vlm.serve.index", "Item": "vlm.serve.store",
    "ItemIndex": "vlm.serve.index", "ItemStore": "vlm.serve.store", "MilvusBackend": "vlm.serve.backends",
    "VectorBackend": "vlm.serve.backends",
})
