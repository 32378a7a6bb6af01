"""Small helpers shared across lpo-train (``io``: atomic writes, JSON lines, fingerprints)."""
