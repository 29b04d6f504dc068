"""Every tokenizer is trained on the user's text, round-trips it, and works inside tf.data."""

import json

import numpy as np
import pytest
import tensorflow as tf

from keraslm.config import TokenizerConfig
from keraslm.errors import InvalidInputError
from keraslm.tokenizers import PAD_ID, UNK_ID, load_tokenizer, train_tokenizer

from conftest import CHINESE_SENTENCE, ENGLISH_SAMPLE

KINDS = ["char", "byte", "wordpiece", "sentencepiece"]


@pytest.fixture(scope="module")
def tokenizers(corpora, tmp_path_factory):
    text = corpora["mixed"].read_text(encoding="utf-8")
    root = tmp_path_factory.mktemp("tokenizers")
    tokenizers = {
        kind: train_tokenizer(TokenizerConfig(tokenizer=kind, vocabulary_size=1500), text, str(root / kind))
        for kind in KINDS
    }
    for kind, tokenizer in tokenizers.items():
        tokenizer.directory = str(root / kind)
    return tokenizers


def _round_trip(tokenizer, texts):
    ids = tokenizer.tokenize(tf.constant(texts))
    return [text.decode("utf-8") for text in tokenizer.detokenize(ids).numpy()], ids


@pytest.mark.parametrize("kind", KINDS)
def test_round_trips_english_and_chinese(tokenizers, kind):
    texts = [ENGLISH_SAMPLE, CHINESE_SENTENCE, "  leading spaces and a tab\there\n\n"]
    if kind in ("char", "wordpiece"):
        texts[2] = "  leading spaces\n\n"  # No tab in the training text, so it would be [UNK].
    decoded, ids = _round_trip(tokenizers[kind], texts)
    assert decoded == texts
    # Nothing decodes to padding or unknown on text made of seen characters.
    flat = ids.flat_values.numpy()
    assert not np.isin(flat, [PAD_ID, UNK_ID]).any()
    assert flat.max() < tokenizers[kind].vocabulary_size


@pytest.mark.parametrize("kind", KINDS)
def test_dense_padded_ids_detokenize_like_ragged(tokenizers, kind):
    ragged = tokenizers[kind].tokenize(tf.constant([CHINESE_SENTENCE, "Speak."]))
    dense = ragged.to_tensor(default_value=PAD_ID)
    assert tokenizers[kind].detokenize(dense).numpy().tolist() == tokenizers[kind].detokenize(ragged).numpy().tolist()


@pytest.mark.parametrize("kind", KINDS)
def test_reloaded_tokenizer_gives_the_same_ids(tokenizers, kind):
    tokenizer = tokenizers[kind]
    reloaded = load_tokenizer(tokenizer.directory)
    assert type(reloaded) is type(tokenizer) and reloaded.vocabulary_size == tokenizer.vocabulary_size
    text = tf.constant([ENGLISH_SAMPLE + CHINESE_SENTENCE])
    assert reloaded.tokenize(text).to_list() == tokenizer.tokenize(text).to_list()


@pytest.mark.parametrize("kind", KINDS)
def test_tokenizes_inside_tf_data(tokenizers, kind):
    dataset = tf.data.Dataset.from_tensor_slices([ENGLISH_SAMPLE, CHINESE_SENTENCE]).batch(2)
    dataset = dataset.map(tokenizers[kind].tokenize, num_parallel_calls=tf.data.AUTOTUNE)
    (ids,) = list(dataset)
    assert ids.to_list() == tokenizers[kind].tokenize(tf.constant([ENGLISH_SAMPLE, CHINESE_SENTENCE])).to_list()


def test_char_vocabulary_is_the_characters_of_the_corpus(tmp_path):
    tokenizer = train_tokenizer(TokenizerConfig("char"), "abca\nb今今", str(tmp_path / "tok"))
    # [PAD], [UNK], then the distinct characters: \n a b c 今
    assert tokenizer.vocabulary_size == 2 + 5
    ids = tokenizer.tokenize(tf.constant(["a今z"])).to_list()[0]
    assert ids[2] == UNK_ID and len(set(ids)) == 3
    assert tokenizer.detokenize(tf.constant([ids])).numpy()[0].decode() == "a今\ufffd"


def test_vocabulary_size_caps_trained_vocabularies(corpora, tmp_path):
    text = corpora["mixed"].read_text(encoding="utf-8")
    char = train_tokenizer(TokenizerConfig("char", vocabulary_size=30), text, str(tmp_path / "char"))
    assert char.vocabulary_size == 30
    wordpiece = train_tokenizer(TokenizerConfig("wordpiece", vocabulary_size=1000), text, str(tmp_path / "wp"))
    assert wordpiece.vocabulary_size == 1000
    wordpiece = train_tokenizer(TokenizerConfig("wordpiece", vocabulary_size=2500), text, str(tmp_path / "wp2"))
    assert wordpiece.vocabulary_size <= 2500
    sentencepiece = train_tokenizer(TokenizerConfig("sentencepiece", vocabulary_size=1200), text, str(tmp_path / "sp"))
    assert sentencepiece.vocabulary_size <= 1200
    # Subwords make English shorter than characters do.
    english = tf.constant([ENGLISH_SAMPLE])
    assert sentencepiece.tokenize(english).flat_values.shape[0] < len(ENGLISH_SAMPLE)
    assert wordpiece.tokenize(english).flat_values.shape[0] < len(ENGLISH_SAMPLE)


def test_byte_tokenizer_needs_no_training(tmp_path):
    tokenizer = train_tokenizer(TokenizerConfig("byte"), "anything", str(tmp_path / "byte"))
    assert tokenizer.vocabulary_size == 258
    assert tokenizer.tokenize(tf.constant(["今"])).flat_values.shape[0] == 3  # three UTF-8 bytes
    assert json.loads((tmp_path / "byte" / "tokenizer.json").read_text())["tokenizer"] == "byte"


def test_sentencepiece_vocabulary_too_small_for_the_characters_is_a_clear_error(corpora, tmp_path):
    text = corpora["chinese"].read_text(encoding="utf-8")
    with pytest.raises(InvalidInputError, match="--vocabulary_size=50"):
        train_tokenizer(TokenizerConfig("sentencepiece", vocabulary_size=50), text, str(tmp_path / "sp"))
    assert not (tmp_path / "sp").exists()
    with pytest.raises(InvalidInputError, match="--vocabulary_size=50 cannot hold"):
        train_tokenizer(TokenizerConfig("wordpiece", vocabulary_size=50), text, str(tmp_path / "wp"))
    assert not (tmp_path / "wp").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_long_words_and_whitespace_runs_round_trip(tokenizers, kind):
    texts = ["\n" * 40, " " * 120, "x" * 150 + " " + "Speak" * 40, CHINESE_SENTENCE * 30]
    decoded, ids = _round_trip(tokenizers[kind], texts)
    assert decoded == texts
    assert not np.isin(ids.flat_values.numpy(), [UNK_ID]).any()


def test_wordpiece_loses_only_the_unseen_character(tokenizers):
    decoded, _ = _round_trip(tokenizers["wordpiece"], ["Speak\u0394speak"])  # Δ is not in the corpus
    assert decoded == ["Speak\ufffdspeak"]


def test_sentencepiece_trains_on_text_with_very_long_lines(tmp_path):
    # One paragraph of 3,000 Chinese characters is 9,000 bytes: over sentencepiece's default
    # sentence limit, which would silently skip it.
    paragraph = (CHINESE_SENTENCE * 215)[:3000]
    tokenizer = train_tokenizer(TokenizerConfig("sentencepiece", vocabulary_size=200), paragraph + "\n", str(tmp_path / "sp"))
    decoded, ids = _round_trip(tokenizer, [paragraph])
    assert decoded == [paragraph]
    assert not np.isin(ids.flat_values.numpy(), [UNK_ID]).any()


def test_wordpiece_can_leave_out_whitespace_tokens(tokenizers):
    """What a classifier reads: the same pieces without the whitespace runs between words."""
    tokenizer = tokenizers["wordpiece"]
    text = "First  Citizen:\nBefore we proceed 今天"
    kept = tokenizer.tokenize(tf.constant([text])).to_list()[0]
    dropped = tokenizer.tokenize(tf.constant([text]), keep_whitespace=False).to_list()[0]
    pieces = [tokenizer.detokenize(tf.constant([[piece]])).numpy()[0].decode("utf-8") for piece in kept]
    assert [piece for piece, token in zip(kept, pieces) if token.strip()] == dropped
    assert len(dropped) < len(kept) and UNK_ID not in dropped


def test_lowercase_and_strip_markup_are_learned_saved_and_applied(tmp_path):
    """The vocabulary is learned from normalized text, and a reloaded tokenizer normalizes the same way."""
    config = TokenizerConfig(tokenizer="char", lowercase=True, strip_markup=True)
    text = "A GREAT Film.<br /><br />École <i>vraiment</i> bien; 1 < 2 > 0\n很好"
    train_tokenizer(config, text, str(tmp_path / "char"))
    vocabulary = (tmp_path / "char" / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    # No capital letter and nothing of a tag is in it; a "<" that opens no tag is text and stays.
    assert not {"A", "G", "É", "/", "i>"} & set(vocabulary) and {"a", "é", "<", ">", "很"} <= set(vocabulary)
    saved = json.loads((tmp_path / "char" / "tokenizer.json").read_text())
    assert saved["lowercase"] is True and saved["strip_markup"] is True
    reloaded = load_tokenizer(str(tmp_path / "char"))
    ids = reloaded.tokenize(tf.constant(["GREAT <b>FILM</b>", "great  film ", "Great<br/>"]))
    decoded = [text.decode("utf-8") for text in reloaded.detokenize(ids).numpy()]
    assert decoded == ["great  film ", "great  film ", "great "]
    # Without the settings (and for tokenizers saved before they existed) text is left alone.
    plain = train_tokenizer(TokenizerConfig(tokenizer="char"), text, str(tmp_path / "plain"))
    assert plain.detokenize(plain.tokenize(tf.constant(["GREAT <i>"]))).numpy()[0].decode("utf-8") == "GREAT <i>"


def test_truncation_keeps_the_head_or_the_head_and_tail():
    from keraslm.tokenizers import truncate

    ids = tf.ragged.constant([list(range(1, 13)), [1, 2, 3], []], dtype=tf.int32)
    assert truncate(ids, 8).to_list() == [[1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3], []]
    # A quarter of 8 from the start, three quarters from the end; short rows are untouched.
    assert truncate(ids, 8, "head_tail").to_list() == [[1, 2, 7, 8, 9, 10, 11, 12], [1, 2, 3], []]
