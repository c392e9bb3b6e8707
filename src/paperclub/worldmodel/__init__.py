"""LeWorldModel: a JEPA world model from pixels, kept from collapse by SIGReg, with latent CEM planning."""
