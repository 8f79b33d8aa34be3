"""Training, evaluation and export of MIML models (extra `train`: torch)."""
