"""Models: MLP, U-Net, VAE, tokenizer, text encoder, mini-CLIP."""
