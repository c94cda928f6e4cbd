"""Text: templates, exact fast prompt encoding, and the forget/retain embeddings."""
