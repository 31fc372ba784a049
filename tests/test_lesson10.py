"""The claims lesson 10 tells about the shipped text encoder, checked without sampling (fast): a causal
encoder's token states hold the words before them, so the function words after an object carry it."""
import numpy as np
import pytest

from minidiff import backend, zoo
from minidiff.nn.module import no_grad

PROMPT = "a red circle on the left"


@pytest.fixture(scope="module")
def encoder_and_tokenizer():
    encoder = zoo.load_text_encoder(zoo.PRETRAINED_DIR / zoo.FILES["text_encoder"], "cpu")
    tokenizer = zoo.load_tokenizer(zoo.PRETRAINED_DIR / zoo.FILES["tokenizer"], encoder.config.vocab_size)
    return encoder, tokenizer


def states(encoder_and_tokenizer, prompts):
    encoder, tokenizer = encoder_and_tokenizer
    ids, mask = tokenizer.encode_batch(list(prompts), encoder.config.max_length)
    with no_grad():
        hidden, _ = encoder.forward(ids, mask)
    return backend.to_numpy(hidden)[:, :len(tokenizer.tokens(PROMPT)) + 2]


def relative_change(a, b):
    return np.linalg.norm(a - b, axis=-1) / np.linalg.norm(a, axis=-1)


def test_states_before_a_swapped_word_do_not_change(encoder_and_tokenizer):
    c = states(encoder_and_tokenizer, [PROMPT, "a blue square on the left", "a red circle on the right"])
    assert relative_change(c[0], c[1])[:2].max() < 1e-5           # <start>, "a"
    assert relative_change(c[0], c[2])[:6].max() < 1e-5           # everything before "left"


def test_function_words_after_the_object_carry_it(encoder_and_tokenizer):
    c = states(encoder_and_tokenizer, [PROMPT, "a blue square on the left"])
    on_the_left = [4, 5, 6]                                        # <start> a red circle on the left <end>
    assert relative_change(c[0], c[1])[on_the_left].min() > 0.5
    unit = c[0] / np.linalg.norm(c[0], axis=-1, keepdims=True)
    assert (unit[on_the_left] @ unit[3]).min() > 0.5               # close to the state of "circle"
