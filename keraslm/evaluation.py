"""Language-model metrics on a text file: perplexity, bits per byte, loss.

The text is tokenized as training tokenizes it and windowed as validation windows it
(keraslm.scoring), so the loss here is the validation loss training reports on the same text.
"""

import math
import sys

import numpy as np

from keraslm.errors import InvalidInputError
from keraslm.tokenizers import PAD_ID, text_chunks

WINDOWS_PER_CALL = 64


def _progress(done, total, stream=sys.stderr):
    """A one-line progress display on a terminal; silent in logs."""
    if stream.isatty():
        stream.write(f"\rscoring: {done:,}/{total:,} windows ({100 * done / max(total, 1):.0f}%)")
        if done >= total:
            stream.write("\n")
        stream.flush()


def evaluate_text(model, text, sequence_length, progress=True):
    """Metrics of a keraslm.inference.LanguageModel on `text` (a str).

    Returns {"loss", "perplexity", "bits_per_byte", "num_tokens", "num_bytes"}: loss in nats per
    predicted token; bits_per_byte counts the same total in bits over the UTF-8 bytes those
    tokens cover, so tokenizers of different granularity compare.
    """
    ids = np.concatenate([np.array(row, np.int32) for row in _tokenize_in_chunks(model, text)])
    if len(ids) < 2:
        raise InvalidInputError("the text has fewer than 2 tokens, so there is nothing to predict; give a longer text")
    starts = np.arange(0, len(ids) - 1, sequence_length)
    padded = np.concatenate([ids, np.full(sequence_length + 1, PAD_ID, np.int32)])
    windows = padded[starts[:, None] + np.arange(sequence_length + 1)[None, :]]
    lengths = np.minimum(len(ids) - starts, sequence_length + 1).astype(np.int32)
    log_likelihood, num_tokens = 0.0, 0
    for first in range(0, len(windows), WINDOWS_PER_CALL):
        window_ll, window_counts = model.score_windows(
            windows[first : first + WINDOWS_PER_CALL], lengths[first : first + WINDOWS_PER_CALL]
        )
        log_likelihood += float(np.sum(window_ll, dtype=np.float64))
        num_tokens += int(np.sum(window_counts))
        if progress:
            _progress(min(first + WINDOWS_PER_CALL, len(windows)), len(windows))
    # The first token is context only: its bytes are not predicted.
    first_token_bytes = len(model.detokenize([[int(ids[0])]])[0].encode("utf-8"))
    num_bytes = len(text.encode("utf-8")) - first_token_bytes
    loss = -log_likelihood / num_tokens
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_byte": -log_likelihood / math.log(2) / num_bytes,
        "num_tokens": num_tokens,
        "num_bytes": num_bytes,
    }


def _tokenize_in_chunks(model, text, chunks_per_call=64):
    """Tokenizes line chunks as training does (keraslm.data.tokenize_text), in bounded calls."""
    chunks = text_chunks(text)
    for first in range(0, len(chunks), chunks_per_call):
        yield from model.tokenize(chunks[first : first + chunks_per_call])
