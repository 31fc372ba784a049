"""train vae_decoder: only the decoder learns; the encoder, and so every latent, stays bit for bit."""
import numpy as np

from minidiff import zoo
from minidiff.train import make_config
from minidiff.train.runners import RUNNERS


def test_only_the_decoder_moves(tmp_path):
    before = zoo.load_vae(zoo.PRETRAINED_DIR / zoo.FILES["vae"], "cpu")
    cfg = make_config("vae_decoder", "quick", {"steps": 4, "batch_size": 4, "dataset_size": 16, "lr": 1e-2})
    result = RUNNERS["vae_decoder"](cfg, out=tmp_path, progress=False)
    after = zoo.load_vae(tmp_path / zoo.FILES["vae"], "cpu")
    assert after.scale_factor == before.scale_factor
    old, new = before.state_dict(), after.state_dict()
    encoder = [k for k in old if k.startswith(("encoder.", "quant_conv."))]
    decoder = [k for k in old if k.startswith(("decoder.", "post_quant_conv."))]
    assert encoder and decoder and len(encoder) + len(decoder) == len(old)
    assert all(np.array_equal(old[k], new[k]) for k in encoder)
    assert sum(not np.array_equal(old[k], new[k]) for k in decoder) > len(decoder) // 2
    assert set(result.evaluation) == {"pink", "base"}
