"""Conversion with a trained model. The defaults that synthesize, --stream and live share live here, where the
CLI and `live` read them without importing torch (as evaluation/__init__.py holds evaluate's)."""

BLOCK_MS = 80.0  # a streaming block
LOOKAHEAD_MS = 60.0  # audio after each block the models see
TIMBRE_STRENGTH = 1.0  # --timbre: full matching to the reference's envelope; 0 = the model's own (timbre.py)
