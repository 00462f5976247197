"""Neural network pieces: backbones, NetVLAD, losses (math in ``functional``)."""
