"""Byte-level BPE: round trips on any text, deterministic merges, padding/mask, files, errors."""
import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidiff.datasets.shapes import caption_corpus
from minidiff.models.tokenizer import (BASE_VOCAB, END_ID, MAX_TEXT_CHARS, PAD_ID, START_ID, WORD_PATTERN,
                                       BPETokenizer, normalise)


@pytest.fixture(scope="module")
def tokenizer():
    corpus = caption_corpus(2000, seed=0) + ["Ünïcödé text, 数字 123 and emoji 🙂🙂 _under_score"]
    return BPETokenizer.train(corpus, vocab_size=400)


@settings(max_examples=25, deadline=None)
@given(text=st.text(max_size=MAX_TEXT_CHARS))
def test_decode_of_encode_is_the_normalised_text(tokenizer, text):
    ids, mask = tokenizer.encode(text)
    assert tokenizer.decode(ids) == normalise(text)
    assert mask.all()


@settings(max_examples=25, deadline=None)
@given(text=st.text(max_size=MAX_TEXT_CHARS), max_length=st.integers(2, 24))
def test_mask_is_true_exactly_on_start_to_end(tokenizer, text, max_length):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ids, mask = tokenizer.encode(text, max_length=max_length)
    length = int(mask.sum())
    assert ids.shape == mask.shape == (max_length,) and ids.dtype == np.int64 and mask.dtype == bool
    assert mask[:length].all() and not mask[length:].any()
    assert ids[0] == START_ID and ids[length - 1] == END_ID
    assert np.all(ids[length:] == PAD_ID)
    assert np.all(ids[1:length - 1] >= 3)      # text never produces a special id


def test_merges_are_deterministic_with_smallest_pair_winning_ties():
    # words "aa", " ab", "ab": (a, b) occurs twice -> first merge, id 259.
    # then (' ', 259) and (a, a) both occur once: the smaller pair (35, 259) < (100, 100) wins.
    tokenizer = BPETokenizer.train(["aa ab", "ab"], vocab_size=BASE_VOCAB + 3)
    space, a, b = 3 + ord(" "), 3 + ord("a"), 3 + ord("b")
    assert tokenizer.merges == [(a, b), (space, 259), (a, a)]
    again = BPETokenizer.train(["aa ab", "ab"], vocab_size=BASE_VOCAB + 3)
    assert again.merges == tokenizer.merges


def test_training_twice_on_the_caption_corpus_gives_the_same_merges(tokenizer):
    corpus = caption_corpus(2000, seed=0) + ["Ünïcödé text, 数字 123 and emoji 🙂🙂 _under_score"]
    assert BPETokenizer.train(corpus, vocab_size=400).merges == tokenizer.merges


def test_frequent_caption_words_become_single_tokens(tokenizer):
    assert tokenizer.tokens("A small red circle above a blue square in the  MIDDLE") == [
        "a", " small", " red", " circle", " above", " a", " blue", " square", " in", " the", " middle"]


def test_training_stops_with_a_warning_when_pairs_run_out():
    # merges (a, b), (ab, c), (" ", abc): then "abc" and " abc" are one token each
    with pytest.warns(UserWarning, match="ran out of pairs after 3 merges"):
        tokenizer = BPETokenizer.train(["abc abc"], vocab_size=BASE_VOCAB + 50)
    assert tokenizer.vocab_size == BASE_VOCAB + 3


def test_truncation_warns_keeps_length_and_end_token(tokenizer):
    with pytest.warns(UserWarning, match="cut to max_length=6"):
        ids, mask = tokenizer.encode("a small red circle above a large blue square", max_length=6)
    assert ids.tolist()[0] == START_ID and ids.tolist()[-1] == END_ID and mask.all()
    assert tokenizer.decode(ids) == "a small red circle"


def test_empty_prompt_is_start_end_and_pads(tokenizer):
    ids, mask = tokenizer.encode("   ", max_length=5)
    assert ids.tolist() == [START_ID, END_ID, PAD_ID, PAD_ID, PAD_ID]
    assert mask.tolist() == [True, True, False, False, False]


def test_encode_batch_pads_to_the_longest_or_to_max_length(tokenizer):
    texts = ["a red circle", "a green circle above a large red square", ""]
    ids, mask = tokenizer.encode_batch(texts)
    assert ids.dtype == np.int64 and mask.dtype == bool
    longest = len(tokenizer.encode(texts[1])[0])
    assert ids.shape == mask.shape == (3, longest) and mask[1].all()
    for row, text in zip(ids, texts):
        assert tokenizer.decode(row) == text
    assert tokenizer.encode_batch(texts, max_length=20)[0].shape == (3, 20)


def test_save_and_load_give_the_same_tokenizer(tokenizer, tmp_path):
    path = tmp_path / "tokenizer.json"
    tokenizer.save(path)
    loaded = BPETokenizer.load(path)
    assert loaded.merges == tokenizer.merges and loaded.vocab_size == tokenizer.vocab_size
    text = "a big purple triangle in the middle 🙂"
    np.testing.assert_array_equal(loaded.encode(text, 32)[0], tokenizer.encode(text, 32)[0])
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]   # no temporary file left


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    (json.dumps({"format": "gpt2"}), "is not a minidiff-bpe-1 tokenizer"),
    (json.dumps({"format": "minidiff-bpe-1", "special_tokens": ["<pad>", "<start>", "<end>"],
                 "merges": [[300, 4]], "vocab_size": 260}), "must join two existing"),
    (json.dumps({"format": "minidiff-bpe-1", "special_tokens": ["<pad>", "<start>", "<end>"],
                 "merges": [[4, 5]], "vocab_size": 999}), "says vocab_size 999"),
    (json.dumps({"format": "minidiff-bpe-1", "special_tokens": ["<pad>", "<start>", "<end>"],
                 "vocab_size": 259}), "merges must be a list of"),
    (json.dumps({"format": "minidiff-bpe-1", "special_tokens": ["<pad>", "<start>", "<end>"],
                 "merges": [["a", "b"]], "vocab_size": 260}), "merges must be a list of"),
    (json.dumps({"format": "minidiff-bpe-1", "special_tokens": ["<pad>", "<start>", "<end>"],
                 "merges": [[4, 5.5]], "vocab_size": 260}), "merges must be a list of"),
    (json.dumps({"format": "minidiff-bpe-1", "special_tokens": ["<pad>", "<start>", "<end>"],
                 "merges": {"4": 5}, "vocab_size": 260}), "merges must be a list of"),
])
def test_load_rejects_foreign_or_damaged_files(tmp_path, content, message):
    path = tmp_path / "tokenizer.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        BPETokenizer.load(path)
    with pytest.raises(FileNotFoundError, match="not found"):
        BPETokenizer.load(tmp_path / "missing.json")


def test_check_vocab_size_names_both_sizes(tokenizer):
    tokenizer.check_vocab_size(tokenizer.vocab_size)
    with pytest.raises(ValueError, match=f"vocab_size {tokenizer.vocab_size} but the model expects 512"):
        tokenizer.check_vocab_size(512)


def test_bad_inputs_raise_clear_errors(tokenizer):
    with pytest.raises(TypeError, match="text must be a str, got int"):
        tokenizer.encode(5)
    with pytest.raises(TypeError, match="list of str"):
        tokenizer.encode_batch("a red circle")
    with pytest.raises(ValueError, match="max_length must be an int >= 2"):
        tokenizer.encode("a red circle", max_length=1)
    with pytest.raises(ValueError, match="vocab_size must be an int >= 259"):
        BPETokenizer.train(["a red circle"], vocab_size=100)
    with pytest.raises(ValueError, match="id 99999 outside the vocabulary"):
        tokenizer.decode([99999])


def test_the_shapes_grammar_takes_exactly_384_ids():
    """The text encoders' default vocab_size (384 = 259 + 125 merges) is the point where every
    word of the caption grammar has become a single token and no pair is left to merge."""
    corpus = caption_corpus(2000, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokenizer = BPETokenizer.train(corpus, vocab_size=384)
    with pytest.warns(UserWarning, match="after 125 merges"):
        BPETokenizer.train(corpus, vocab_size=385)
    for text in corpus:   # one token per word: "a", " picture", " of", ..., ",", " a", " red", ...
        assert len(tokenizer.encode_text(text)) == len(WORD_PATTERN.findall(text))
    assert max(len(tokenizer.encode(text)[0]) for text in corpus) == 17   # <start> + 15 + <end>


def test_a_text_over_the_length_cap_is_refused_naming_the_cap(tokenizer):
    assert MAX_TEXT_CHARS == 1000
    ids, _ = tokenizer.encode("a" * MAX_TEXT_CHARS, max_length=None)     # at the cap: encoded whole
    assert len(ids) > 2
    for encode in (lambda text: tokenizer.encode(text, max_length=24), tokenizer.encode_text, tokenizer.tokens,
                   lambda text: tokenizer.encode_batch(["a red circle", text])):
        with pytest.raises(ValueError, match="a text of 1,001 characters is over the limit of 1,000"):
            encode("a" * (MAX_TEXT_CHARS + 1))
