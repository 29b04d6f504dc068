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
        # math.exp raises OverflowError past e**709; a model that bad has an infinite perplexity.
        "perplexity": math.exp(loss) if loss < 709 else float("inf"),
        # A first token decoded longer than its text ([UNK] shows as U+FFFD, 3 bytes) can leave
        # no bytes to divide by.
        "bits_per_byte": -log_likelihood / math.log(2) / num_bytes if num_bytes > 0 else float("nan"),
        "num_tokens": num_tokens,
        "num_bytes": num_bytes,
    }


def json_safe(metrics):
    """The metrics with NaN and infinities as None, so json.dumps(..., allow_nan=False) accepts them.

    A model whose weights hold NaN (a diverged run exported anyway) scores NaN; JSON has no NaN,
    and Python's json writes a bare `NaN` that strict parsers reject.
    """
    return {
        key: None if isinstance(value, float) and not math.isfinite(value) else value for key, value in metrics.items()
    }


def _tokenize_in_chunks(model, text, chunks_per_call=64):
    """Tokenizes line chunks as training does (keraslm.data.tokenize_text), in bounded calls."""
    chunks = text_chunks(text)
    for first in range(0, len(chunks), chunks_per_call):
        yield from model.tokenize(chunks[first : first + chunks_per_call])
