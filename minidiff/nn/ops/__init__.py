"""The (forward, backward) pairs by family, each the derivation beside its code.

    linear.py      linear
    conv.py        im2col / col2im, conv2d, conv_transpose2d
    resample.py    upsample_nearest2x, avg_pool2d
    norm.py        normalize (shared by GroupNorm and LayerNorm), group_norm (+ SiLU), layer_norm
    activation.py  silu, gelu, normal_cdf, geglu, softmax, log_softmax   (erf.py: erf and its tails)
    attention.py   scaled dot-product attention
    embedding.py   embedding, sinusoidal_embedding
    loss.py        dropout, mse_loss, cross_entropy
    _checks.py     the argument checks every op starts with

``minidiff/nn/functional.py`` re-exports them all; read the contract there.
"""
