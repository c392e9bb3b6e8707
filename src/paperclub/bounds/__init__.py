"""Generalization bounds by compression (PAC-Bayes, Occam) and the demos that show why."""
