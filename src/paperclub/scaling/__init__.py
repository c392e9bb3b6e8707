"""Data-constrained pre-training (Kim et al., "Pre-training under infinite compute", 2025)."""
