"""Neural-net building blocks shared by every system (norms, rotary embeddings, attention, MLPs, AdaLN)."""
