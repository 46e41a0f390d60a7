"""Stage 1: the encoders pretrained alone (their own objectives), cached, loaded as real weights are."""
