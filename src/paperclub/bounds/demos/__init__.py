"""Lecture demos for compression-based generalization: soft inductive bias and double descent."""
