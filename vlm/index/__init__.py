"""The retrieval engine: an index folder (SQLite item table + faiss or Milvus vectors), usable without a server.

    import vlm.index
    index = vlm.index.open("indexes/shapes")
    hits = index.search(query_vectors, k=10)

`vlm serve` maps HTTP onto this package; nothing here imports the server.
"""

from vlm.lazy import lazy_attributes

__getattr__ = lazy_attributes(globals(), {
    "FaissBackend": "vlm.index.backends", "FaissConfig": "vlm.index.backends", "MilvusBackend": "vlm.index.milvus",
    "VectorBackend": "vlm.index.backends", "Hit": "vlm.index.folder", "IndexConfig": "vlm.index.config",
    "IndexFolderError": "vlm.index.folder", "ItemIndex": "vlm.index.folder", "open": "vlm.index.folder",
    "Item": "vlm.index.store", "ItemStore": "vlm.index.store", "Encoder": "vlm.index.encoder",
    "load_encoder": "vlm.index.encoder", "MilvusRegistry": "vlm.index.milvus",
})
