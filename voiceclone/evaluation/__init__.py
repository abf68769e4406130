"""Measuring trained models: metrics, the convergence detector, curves, speaker judges, and the modes of
`voiceclone evaluate` (evaluate: the full report; compare: --baseline; watch: --run alone)."""

DEFAULT_PAIRS = 40  # zero-shot conversions per evaluation
DEFAULT_MAX_UTTERANCES = 40  # utterances reconstructed and copy-synthesized per evaluation
