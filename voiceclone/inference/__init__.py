"""Conversion with a trained model. The streaming defaults (synthesize --stream, live) live here, where the
CLI and `live` read them without importing torch (as evaluation/__init__.py holds evaluate's)."""

BLOCK_MS = 80.0  # a streaming block
LOOKAHEAD_MS = 60.0  # audio after each block the models see
