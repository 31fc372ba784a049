"""Models: the blocks they share, MLP, U-Net, VAE (+ its loss), tokenizer, text encoder, mini-CLIP,
attribute classifier, patch discriminator. A model knows nothing of data, optimisers,
checkpoints or training."""
