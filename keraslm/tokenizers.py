"""Trains, saves and loads the four tokenizers, as tf.Modules that run inside tf.data and SavedModels.

Every tokenizer maps a batch of strings to ragged int32 ids and back using only TensorFlow and
tensorflow-text ops, so the same object tokenizes the training data and ships inside the exported
SavedModel (its vocabulary file travels as a SavedModel asset). All four are lossless on text made
of characters seen in training: whitespace and newlines survive the round trip, which a language
model needs to reproduce layout.

Ids 0 and 1 are always [PAD] and [UNK]. Detokenizing drops [PAD] and shows [UNK] as U+FFFD.

Vocabulary training uses keras-nlp's `compute_word_piece_vocabulary` for WordPiece and the
`sentencepiece` trainer directly for SentencePiece: keras-nlp's `compute_sentence_piece_proto`
hard-codes NFKC normalization and whitespace collapsing, which rewrite Chinese full-width
punctuation ("，" becomes ",") and drop newlines. The character vocabulary and the
whitespace-preserving pre-split for WordPiece are hand-written: neither library has them.
"""

import collections
import io
import json
import os
import shutil

import tensorflow as tf
import tensorflow_text as tf_text

from keraslm.config import DEFAULT_SUBWORD_VOCABULARY_SIZE, TokenizerConfig, write_json_atomic
from keraslm.errors import InputNotFoundError, InvalidInputError
from keraslm.tf_import import native_stderr_captured

PAD_TOKEN, UNK_TOKEN = "[PAD]", "[UNK]"
PAD_ID, UNK_ID = 0, 1
NUM_SPECIAL_TOKENS = 2
REPLACEMENT_CHARACTER = "\ufffd"

TOKENIZER_FILE = "tokenizer.json"
VOCABULARY_FILE = "vocabulary.txt"
SENTENCEPIECE_FILE = "sentencepiece.model"

# TF's text-file table initializer reads vocabulary.txt line by line, so the two line-break
# characters are stored as private-use code points. Text that itself contains U+E00A or U+E00D
# reads them as line breaks; the character vocabulary leaves them out.
_LINE_BREAK_ESCAPES = (("\n", "\ue00a"), ("\r", "\ue00d"))

# WordPiece pre-split: runs of whitespace, single punctuation or symbol characters and single Han
# characters are words of their own, and every other run of characters is a word. Whitespace is
# kept as tokens so detokenizing is a plain concatenation.
_WORD_BOUNDARY = r"\s+|[\p{P}\p{S}]|\p{Han}"
_WORDPIECE_SUFFIX = "##"
# A pre-split word that is only whitespace (line breaks are escaped to private-use characters).
_WHITESPACE_WORD = r"[\s\x{e00a}\x{e00d}]+"
# Words longer than this many bytes would become one [UNK]; runs of spaces or line breaks,
# URLs and unspaced scripts (Thai, kana) reach 100 bytes easily, so the cap is far out of the way.
_WORDPIECE_MAX_BYTES_PER_WORD = 1 << 20
# sentencepiece skips training sentences over max_sentence_length bytes (4192 by default):
# long lines are cut into pieces of at most this many characters (4 bytes each at most).
_SENTENCEPIECE_MAX_CHARS = 1024


def _escape(strings):
    for raw, escaped in _LINE_BREAK_ESCAPES:
        strings = tf.strings.regex_replace(strings, raw, escaped)
    return strings


def _unescape(strings):
    for raw, escaped in _LINE_BREAK_ESCAPES:
        strings = tf.strings.regex_replace(strings, escaped, raw)
    return strings


def _escape_text(text):
    for raw, escaped in _LINE_BREAK_ESCAPES:
        text = text.replace(raw, escaped)
    return text


def _pre_split(texts):
    """Splits strings [B] into escaped words, ragged [B, (words)]."""
    words = tf_text.regex_split(texts, _WORD_BOUNDARY, _WORD_BOUNDARY)
    return _escape(words)


# --strip_markup: an HTML/XML tag ("<br />", "<i>") becomes a space. Bounded so that a stray "<"
# in prose ("a < b ... >") does not swallow a paragraph.
_MARKUP_TAG = r"</?[A-Za-z][^<>]{0,200}>"


def normalize(texts, lowercase=False, strip_markup=False):
    """The text normalization a tokenizer applies before splitting: strings [B] -> strings [B].

    TensorFlow ops only, so training (the vocabulary and the data) and the exported SavedModel
    normalize identically. lowercase is Unicode-aware (ICU), so "É" becomes "é" too.
    """
    if strip_markup:
        texts = tf.strings.regex_replace(texts, _MARKUP_TAG, " ")
    if lowercase:
        texts = tf.strings.lower(texts, encoding="utf-8")
    return texts


def normalize_text(text, lowercase=False, strip_markup=False, lines_per_chunk=4096):
    """`normalize` on one Python string (a tokenizer's training text), line by line."""
    if not (lowercase or strip_markup):
        return text
    chunks = text_chunks(text, lines_per_chunk)
    return "".join(
        value.decode("utf-8")
        for start in range(0, len(chunks), 64)
        for value in normalize(tf.constant(chunks[start : start + 64]), lowercase, strip_markup).numpy()
    )


def truncate(ids, length, truncation="head"):
    """Cuts ragged ids [B, (T)] to at most `length` per row.

    head: the first `length` tokens. head_tail: the first quarter and the last three quarters of
    `length` (Sun et al. 2019, "How to Fine-Tune BERT for Text Classification": a long review's
    verdict is often at its end).
    """
    if truncation == "head":
        return ids[:, :length]
    head = length // 4
    tail = length - head
    positions = tf.ragged.range(ids.row_lengths())
    # A row of at most `length` tokens keeps every position: each is < head or >= n - tail.
    tail_start = tf.expand_dims(ids.row_lengths() - tail, 1)
    keep = tf.logical_or(positions < head, positions >= tail_start)
    return tf.ragged.boolean_mask(ids, keep)


class Tokenizer(tf.Module):
    """Base class: `tokenize` strings [B] -> ragged int32 [B, (tokens)]; `detokenize` back."""

    kind = None

    def __init__(self, vocabulary_size, name=None, lowercase=False, strip_markup=False):
        super().__init__(name=name)
        self.vocabulary_size = vocabulary_size
        # Plain Python attributes: they shape the traced graph, and the SavedModel keeps that.
        self.lowercase = lowercase
        self.strip_markup = strip_markup

    def tokenize(self, texts, keep_whitespace=True):
        """Normalizes (--lowercase, --strip_markup), then splits into ids.

        keep_whitespace=False drops tokens that are only whitespace, where a tokenizer has such
        tokens (WordPiece: they exist so that decoding restores the text exactly). A classifier
        never decodes, and they would double its input's length."""
        return self._tokenize(normalize(texts, self.lowercase, self.strip_markup), keep_whitespace)

    def _tokenize(self, texts, keep_whitespace):
        raise NotImplementedError

    def detokenize(self, ids):
        """Ids [B, T] (dense with [PAD] filler, or ragged) -> strings [B]."""
        raise NotImplementedError

    def config(self):
        return {
            "tokenizer": self.kind,
            "vocabulary_size": self.vocabulary_size,
            "lowercase": self.lowercase,
            "strip_markup": self.strip_markup,
        }


class _VocabularyFileTokenizer(Tokenizer):
    """Shared part of the tokenizers whose vocabulary is a one-token-per-line file."""

    def __init__(self, directory, name=None, **normalization):
        path = os.path.join(directory, VOCABULARY_FILE)
        with open(path, encoding="utf-8", newline="\n") as file:
            tokens = file.read().split("\n")[:-1]
        super().__init__(len(tokens), name=name, **normalization)
        self.longest_token = max(len(token) for token in tokens)
        # As an Asset, the file is copied into the SavedModel and the tables are rebuilt from it
        # when the SavedModel is loaded.
        self.vocabulary_file = tf.saved_model.Asset(path)
        line = tf.lookup.TextFileIndex
        self._token_to_id = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(self.vocabulary_file, tf.string, line.WHOLE_LINE, tf.int64, line.LINE_NUMBER),
            default_value=-1,
        )
        self._id_to_token = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(self.vocabulary_file, tf.int64, line.LINE_NUMBER, tf.string, line.WHOLE_LINE),
            default_value="",
        )

    def _ids_of(self, tokens):
        """Escaped token strings (dense or ragged) -> int32 ids, [UNK] for unknown tokens."""
        return tf.ragged.map_flat_values(self._lookup_ids, tokens)

    def _lookup_ids(self, tokens):
        ids = self._token_to_id.lookup(tokens)
        return tf.cast(tf.where(ids < 0, tf.cast(UNK_ID, tf.int64), ids), tf.int32)

    def _tokens_of(self, ids):
        """Ids (dense or ragged) -> token strings; [PAD] becomes "" and [UNK] U+FFFD."""
        return tf.ragged.map_flat_values(self._lookup_tokens, tf.cast(ids, tf.int64))

    def _lookup_tokens(self, ids):
        tokens = self._id_to_token.lookup(ids)
        tokens = tf.where(tf.equal(ids, PAD_ID), "", tokens)
        return tf.where(tf.equal(ids, UNK_ID), REPLACEMENT_CHARACTER, tokens)


class CharTokenizer(_VocabularyFileTokenizer):
    """One id per Unicode character seen in the training text."""

    kind = "char"

    def _tokenize(self, texts, keep_whitespace):
        del keep_whitespace  # A character model reads spaces as word boundaries.
        characters = _escape(tf.strings.unicode_split(texts, "UTF-8"))  # (B, (chars))
        return self._ids_of(characters)

    def detokenize(self, ids):
        return _unescape(tf.strings.reduce_join(self._tokens_of(ids), axis=-1))


class WordPieceTokenizer(_VocabularyFileTokenizer):
    """WordPiece over whitespace-preserving words, so detokenizing restores the text exactly."""

    kind = "wordpiece"

    def __init__(self, directory, name=None, **normalization):
        super().__init__(directory, name=name, **normalization)
        self._wordpiece = tf_text.WordpieceTokenizer(
            self._token_to_id,
            suffix_indicator=_WORDPIECE_SUFFIX,
            max_bytes_per_word=_WORDPIECE_MAX_BYTES_PER_WORD,
            # Bounds the greedy longest-match search, so long words stay linear.
            max_chars_per_token=self.longest_token,
            token_out_type=tf.int64,
            unknown_token=UNK_TOKEN,
            # An unseen character becomes one [UNK], not its whole word.
            split_unknown_characters=True,
        )

    def _tokenize(self, texts, keep_whitespace):
        words = _pre_split(texts)  # (B, (words)), whitespace runs their own words
        if not keep_whitespace:
            words = tf.ragged.boolean_mask(words, tf.logical_not(tf.strings.regex_full_match(words, _WHITESPACE_WORD)))
        pieces = self._wordpiece.tokenize(words)  # (B, (words), (pieces))
        # An unseen character inside a word comes out as "##[UNK]", which is not in the
        # vocabulary (-1): it is [UNK].
        pieces = tf.ragged.map_flat_values(lambda ids: tf.where(ids < 0, tf.cast(UNK_ID, ids.dtype), ids), pieces)
        return tf.cast(pieces.merge_dims(-2, -1), tf.int32)

    def detokenize(self, ids):
        tokens = self._tokens_of(ids)
        # A suffix piece continues the previous piece; whitespace is its own token, so a plain
        # concatenation restores the text.
        tokens = tf.strings.regex_replace(tokens, "^" + _WORDPIECE_SUFFIX, "")
        return _unescape(tf.strings.reduce_join(tokens, axis=-1))


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes: id = byte + 2. Needs no training and no vocabulary file."""

    kind = "byte"

    def __init__(self, name=None, **normalization):
        super().__init__(NUM_SPECIAL_TOKENS + 256, name=name, **normalization)
        self._id_to_bytes = tf.constant(["", REPLACEMENT_CHARACTER] + [bytes([value]) for value in range(256)])

    def _tokenize(self, texts, keep_whitespace):
        del keep_whitespace  # Bytes are bytes.
        byte_values = tf_text.ByteSplitter().split(texts)  # (B, (bytes)) uint8
        return tf.cast(byte_values, tf.int32) + NUM_SPECIAL_TOKENS

    def detokenize(self, ids):
        ids = tf.clip_by_value(ids, 0, self.vocabulary_size - 1)
        return tf.strings.reduce_join(tf.gather(self._id_to_bytes, ids), axis=-1)


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece unigram model trained without normalization, so it is lossless."""

    kind = "sentencepiece"

    def __init__(self, directory, name=None, **normalization):
        path = os.path.join(directory, SENTENCEPIECE_FILE)
        with open(path, "rb") as file:
            model = file.read()
        # tensorflow-text keeps the model proto as a constant in the graph; the file also
        # travels as an asset so the SavedModel holds the tokenizer in its usual form.
        self.model_file = tf.saved_model.Asset(path)
        # Loading the model logs "normalizer.cc(51) LOG(INFO) precompiled_charsmap is empty" from
        # the sentencepiece copy inside tensorflow-text, straight to descriptor 2; the trainer's
        # minloglevel does not reach that copy. (Kept on failure.)
        with native_stderr_captured():
            self._sentencepiece = tf_text.SentencepieceTokenizer(model=model, out_type=tf.int32)
        super().__init__(int(self._sentencepiece.vocab_size()), name=name, **normalization)

    def _tokenize(self, texts, keep_whitespace):
        del keep_whitespace  # Its pieces carry their leading space ("▁") with them.
        return self._sentencepiece.tokenize(texts)

    def detokenize(self, ids):
        return self._sentencepiece.detokenize(ids)


# === Training ===


def train_tokenizer(config: TokenizerConfig, text, directory):
    """Trains a tokenizer of `config.tokenizer` kind on `text`, writes it to `directory`, loads it.

    The directory appears complete or not at all: files are written to a temporary sibling
    that is renamed at the end.
    """
    config.validate()
    normalization = {"lowercase": config.lowercase, "strip_markup": config.strip_markup}
    # The vocabulary is learned from the text the tokenizer will see.
    text = normalize_text(text, **normalization)
    temporary = f"{directory}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    os.makedirs(temporary)
    try:
        if config.tokenizer == "char":
            _write_vocabulary(_character_vocabulary(text, config.vocabulary_size), temporary)
        elif config.tokenizer == "wordpiece":
            _write_vocabulary(_wordpiece_vocabulary(text, config.vocabulary_size), temporary)
        elif config.tokenizer == "sentencepiece":
            _train_sentencepiece(text, config.vocabulary_size, os.path.join(temporary, SENTENCEPIECE_FILE))
        tokenizer = _construct(config.tokenizer, temporary, normalization)
        write_json_atomic(os.path.join(temporary, TOKENIZER_FILE), tokenizer.config())
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(temporary, directory)
    return load_tokenizer(directory)


def load_tokenizer(directory):
    """Loads a tokenizer written by `train_tokenizer`."""
    path = os.path.join(directory, TOKENIZER_FILE)
    if not os.path.isfile(path):
        raise InputNotFoundError(f"{directory}: no {TOKENIZER_FILE}; this is not a keraslm tokenizer directory")
    with open(path, encoding="utf-8") as file:
        saved = json.load(file)
    # Tokenizers saved before normalization existed have neither field: no normalization.
    normalization = {name: bool(saved.get(name, False)) for name in ("lowercase", "strip_markup")}
    return _construct(saved["tokenizer"], directory, normalization)


def _construct(kind, directory, normalization):
    if kind == "char":
        return CharTokenizer(directory, **normalization)
    if kind == "byte":
        return ByteTokenizer(**normalization)
    if kind == "wordpiece":
        return WordPieceTokenizer(directory, **normalization)
    if kind == "sentencepiece":
        return SentencePieceTokenizer(directory, **normalization)
    raise InvalidInputError(f"{directory}: unknown tokenizer kind {kind!r}")


def _write_vocabulary(tokens, directory):
    with open(os.path.join(directory, VOCABULARY_FILE), "w", encoding="utf-8") as file:
        for token in tokens:
            file.write(token + "\n")


def _character_vocabulary(text, vocabulary_size):
    counts = collections.Counter(text)
    for _, escaped in _LINE_BREAK_ESCAPES:
        counts.pop(escaped, None)
    characters = [character for character, _ in counts.most_common()]
    if vocabulary_size:
        characters = characters[: vocabulary_size - NUM_SPECIAL_TOKENS]
    # Code-point order, as nanoGPT's character vocabulary, so ids are stable across runs.
    return [PAD_TOKEN, UNK_TOKEN] + [_escape_text(character) for character in sorted(characters)]


def text_chunks(text, lines_per_chunk=256):
    """Splits text into chunks of whole lines (line breaks kept) for tf.data."""
    lines = text.splitlines(keepends=True)
    return ["".join(lines[start : start + lines_per_chunk]) for start in range(0, len(lines), lines_per_chunk)]


def _wordpiece_vocabulary(text, vocabulary_size):
    """keras-nlp's WordPiece vocabulary, completed so that every seen character has a piece.

    keras-nlp truncates the learner's output to vocabulary_size, and the learner lists the
    single-character suffix pieces ("##x") last, so on a text with many distinct characters
    (Chinese) the cut drops them and whole words become [UNK]. The character pieces that the
    text's words need are therefore kept first, and learned pieces fill the rest.
    """
    import keras_nlp  # Only training needs keras-nlp; tokenizing and SavedModels do not.

    vocabulary_size = vocabulary_size or DEFAULT_SUBWORD_VOCABULARY_SIZE
    chunks = tf.data.Dataset.from_tensor_slices(text_chunks(text)).batch(64)
    words = chunks.map(_pre_split, num_parallel_calls=tf.data.AUTOTUNE)
    first_characters, later_characters = set(), set()
    for batch in words:
        for word in set(batch.flat_values.numpy().tolist()):
            word = word.decode("utf-8")
            first_characters.add(word[0])
            later_characters.update(word[1:])
    required = sorted(first_characters) + [_WORDPIECE_SUFFIX + character for character in sorted(later_characters)]
    if NUM_SPECIAL_TOKENS + len(required) > vocabulary_size:
        raise InvalidInputError(
            f"--vocabulary_size={vocabulary_size} cannot hold the {len(required)} single-character pieces the "
            f"training text needs plus 2 special tokens; use --vocabulary_size={NUM_SPECIAL_TOKENS + len(required)} "
            "or more, or --tokenizer=char or byte"
        )
    learned = keras_nlp.tokenizers.compute_word_piece_vocabulary(
        words,
        vocabulary_size,
        split=False,
        suffix_indicator=_WORDPIECE_SUFFIX,
        reserved_tokens=[PAD_TOKEN, UNK_TOKEN],
    )
    kept = set(required) | {PAD_TOKEN, UNK_TOKEN}
    learned = [token for token in learned if token not in kept]
    room = vocabulary_size - NUM_SPECIAL_TOKENS - len(required)
    return [PAD_TOKEN, UNK_TOKEN] + required + learned[:room]


def _bounded_lines(text, max_chars):
    """Lines (line breaks kept), long ones cut into pieces of at most max_chars characters."""
    for line in text.splitlines(keepends=True):
        for start in range(0, len(line), max_chars):
            yield line[start : start + max_chars]


def _train_sentencepiece(text, vocabulary_size, path):
    import sentencepiece  # Installed with keras-nlp; only training needs it.

    vocabulary_size = vocabulary_size or DEFAULT_SUBWORD_VOCABULARY_SIZE
    # character_coverage=1.0 keeps every character as a piece (so the text round-trips), which
    # sentencepiece refuses when the vocabulary cannot hold them all.
    required = len(set(text) | {"\n", "\r", "\t"}) + NUM_SPECIAL_TOKENS
    if vocabulary_size < required:
        raise InvalidInputError(
            f"--vocabulary_size={vocabulary_size} is smaller than the {required - NUM_SPECIAL_TOKENS} distinct "
            f"characters of the training text plus 2 special tokens; sentencepiece keeps every character, so use "
            f"--vocabulary_size={required} or more, or --tokenizer=char or byte"
        )
    model = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=_bounded_lines(text, _SENTENCEPIECE_MAX_CHARS),
            model_writer=model,
            vocab_size=vocabulary_size,
            # A soft limit: a small corpus gets a smaller vocabulary instead of an error.
            hard_vocab_limit=False,
            model_type="unigram",
            # Lossless settings: no normalization, keep every space, no dummy leading space
            # (chunks are tokenized separately and concatenated), line breaks and tabs as pieces.
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            user_defined_symbols=["\n", "\r", "\t"],
            character_coverage=1.0,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=-1,
            eos_id=-1,
            unk_surface=REPLACEMENT_CHARACTER,
            max_sentence_length=4 * _SENTENCEPIECE_MAX_CHARS + 16,
            input_sentence_size=2_000_000,
            shuffle_input_sentence=True,
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as error:
        raise InvalidInputError(
            f"sentencepiece could not train with --vocabulary_size={vocabulary_size}: {error}"
        ) from None
    with open(path, "wb") as file:
        file.write(model.getvalue())
