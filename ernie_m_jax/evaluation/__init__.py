"""Using a trained encoder: sentence vectors and cross-lingual retrieval."""
