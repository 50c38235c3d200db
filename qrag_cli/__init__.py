"""qrag: multi-step Q-value retrieval (Q-RAG) over local files."""

__version__ = "0.1.0"
