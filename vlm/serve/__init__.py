"""The retrieval HTTP API: FastAPI routes, the clip-retrieval protocol and the web page over `vlm.index`."""
