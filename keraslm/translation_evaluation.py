"""A translation export's quality on a sentence-pair file: corpus BLEU and chrF (sacrebleu), exact match, speed.

Every reference of a source counts: pairs that share a source are one sentence to translate with
several references (keraslm.pairs.references), as sacrebleu scores multi-reference test sets.
What is measured is the export's own output (keraslm.inference.Translator), what TF Serving
would answer.
"""

import sys
import time

from sacrebleu.metrics import BLEU, CHRF

from keraslm.errors import InvalidInputError
from keraslm.pairs import references

# sacrebleu's default and WMT's: the signature in the result says so too.
BLEU_TOKENIZER = "13a"


def _progress(done, total, stream=sys.stderr):
    """A one-line progress display on a terminal; silent in logs."""
    if stream.isatty():
        stream.write(f"\rtranslating: {done:,}/{total:,} sentences ({100 * done / max(total, 1):.0f}%)")
        stream.write("\n" if done >= total else "")
        stream.flush()


def reference_streams(references):
    """sacrebleu's layout of per-source reference lists: stream k holds every source's k-th reference.

    A source with fewer references than the most has None in the streams beyond its own:
    sacrebleu 2.x drops None (metrics/base.py, _cache_references: `[x for x in refs if x is not
    None]`) and reports "nrefs:var". An empty string would instead count as a real, empty
    reference: BLEU could take its length 0 as the closest reference length.
    """
    width = max((len(group) for group in references), default=0)
    return [[group[k] if k < len(group) else None for group in references] for k in range(width)]


def _resolved_decoding(translator, decoding):
    """The settings every call uses, resolved once: one seed for the whole run, and a bad value
    refused before minutes of translation rather than after the first batch."""
    resolve = getattr(translator, "decoding_controls", None)
    if resolve is None:  # A stand-in translator (tests): what was asked for is what is reported.
        return dict(decoding), dict(decoding)
    settings = resolve(**decoding)
    call = dict(settings)
    if settings["num_beams"] > 1:
        # Beam search is deterministic and refuses the sampling controls.
        del call["temperature"], call["seed"]
        settings["temperature"] = settings["seed"] = None
    elif settings["temperature"] == 0:
        settings["seed"] = None  # Greedy decoding draws nothing.
    return call, settings


def evaluate_translator(translator, pairs, batch_size=64, **decoding):
    """Metrics of a translator on a keraslm.pairs.Pairs; decoding: translate()'s controls.

    Returns {bleu, chrf (0 to 100, corpus level), exact_match (share of sources translated to one
    of their references, whitespace stripped), num_sources, num_pairs, max_references (distinct),
    tokens_per_second (generated tokens / seconds in translate calls), seconds, bleu_signature,
    chrf_signature, and the decoding settings used (max_new_tokens, num_beams, length_penalty,
    temperature, seed; None where they do not apply)}.
    """
    if batch_size < 1:
        raise InvalidInputError(f"batch_size={batch_size} must be at least 1")
    sources, reference_lists = references(pairs)
    # A pair repeated in the file is one reference, not two: the scores would not change, but
    # max_references and sacrebleu's nrefs would overstate the test set.
    reference_lists = [list(dict.fromkeys(group)) for group in reference_lists]
    if not sources:
        raise InvalidInputError(f"{pairs.path} holds no sentence pairs to evaluate on")
    call, settings = _resolved_decoding(translator, decoding)
    results, seconds = [], 0.0
    for start in range(0, len(sources), batch_size):
        began = time.perf_counter()
        results += translator.translate_with_details(sources[start : start + batch_size], **call)
        seconds += time.perf_counter() - began
        _progress(len(results), len(sources))
    hypotheses = [result.text for result in results]
    streams = reference_streams(reference_lists)
    bleu, chrf = BLEU(tokenize=BLEU_TOKENIZER), CHRF()
    bleu_score = bleu.corpus_score(hypotheses, streams)
    chrf_score = chrf.corpus_score(hypotheses, streams)
    exact = sum(
        hypothesis.strip() in {reference.strip() for reference in group}
        for hypothesis, group in zip(hypotheses, reference_lists)
    )
    num_tokens = sum(result.num_tokens for result in results)
    return {
        "bleu": float(bleu_score.score),
        "chrf": float(chrf_score.score),
        "exact_match": exact / len(sources),
        "num_sources": len(sources),
        "num_pairs": len(pairs.sources),
        "max_references": len(streams),
        "tokens_per_second": num_tokens / seconds if seconds > 0 else float("nan"),
        "seconds": seconds,
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
        **{name: settings.get(name) for name in ("max_new_tokens", "num_beams", "length_penalty", "temperature", "seed")},
    }
