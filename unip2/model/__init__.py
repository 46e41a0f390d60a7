"""The model: image encoder (backbone, proposals, image tokens), text encoder, shared MoE decoder, scorer."""
