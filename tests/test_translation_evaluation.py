"""Translation metrics against sacrebleu called directly, and the Translator's argument checks,
without a trained model: a stand-in translator answers from a table."""

import io

import numpy as np
import pytest
import sacrebleu

from keraslm import pairs as pairs_lib
from keraslm import translation_evaluation
from keraslm.errors import InvalidInputError
from keraslm.inference import Translation, Translator, translation_controls
from keraslm.translation_evaluation import evaluate_translator, reference_streams

# A pair file with 1 to 3 references per source, one source's pairs not on consecutive lines,
# and one pair twice.
PAIRS_TSV = (
    "source\ttarget\n"
    "I am cold.\tJ'ai froid.\n"
    "Hello.\tBonjour à vous tous ici présents.\n"
    "Hello.\tBonjour à vous tous ici présents.\n"
    "Thank you very much.\tMerci beaucoup.\n"
    "I am cold.\tJe suis gelé.\n"
    "Thank you very much.\tMerci bien.\n"
    "The cat sleeps.\tLe chat dort.\n"
    "Thank you very much.\tJe vous remercie beaucoup.\n"
)
# What the stand-in model answers, and how many tokens it "generated".
ANSWERS = {
    "I am cold.": ("Je suis gelé.", 5),  # the second reference, exactly
    "Hello.": ("Bonjour", 2),  # shorter than its only reference
    "Thank you very much.": ("  Merci bien. ", 4),  # the second reference, once stripped
    "The cat sleeps.": ("Le chien dort.", 5),  # none of them
}
HYPOTHESES = [ANSWERS[source][0] for source in ("I am cold.", "Hello.", "Thank you very much.", "The cat sleeps.")]
# The references as sacrebleu takes them, written out by hand: stream k holds each source's k-th
# reference (sources in the order first seen), None where a source has fewer.
STREAMS = [
    ["J'ai froid.", "Bonjour à vous tous ici présents.", "Merci beaucoup.", "Le chat dort."],
    ["Je suis gelé.", None, "Merci bien.", None],
    [None, None, "Je vous remercie beaucoup.", None],
]


class StandInTranslator:
    """Duck-types keraslm.inference.Translator's translate_with_details; records its calls."""

    def __init__(self):
        self.calls = []

    def translate_with_details(self, sources, **decoding):
        self.calls.append((list(sources), decoding))
        return [Translation(ANSWERS[source][0], -1.0, ANSWERS[source][1]) for source in sources]


@pytest.fixture
def pairs(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text(PAIRS_TSV, encoding="utf-8")
    return pairs_lib.read_pairs(str(path), "--data")


def test_reference_streams_pad_with_none():
    assert reference_streams([["a", "b"], ["c"], ["d", "e", "f"]]) == [["a", "c", "d"], ["b", None, "e"], [None, None, "f"]]


def test_bleu_and_chrf_are_sacrebleus_with_every_reference(pairs):
    metrics = evaluate_translator(StandInTranslator(), pairs)
    assert metrics["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPOTHESES, STREAMS, tokenize="13a").score)
    assert metrics["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPOTHESES, STREAMS).score)
    assert 0 < metrics["bleu"] < 100 and 0 < metrics["chrf"] < 100
    assert (metrics["num_sources"], metrics["num_pairs"], metrics["max_references"]) == (4, 8, 3)
    # The tokenizer and the variable reference count are stated in the result.
    assert "tok:13a" in metrics["bleu_signature"] and "nrefs:var" in metrics["bleu_signature"]
    assert "nrefs:var" in metrics["chrf_signature"]


def test_every_reference_counts_not_only_the_first(pairs):
    """The data is chosen so that the wrong arrangements give other scores."""
    bleu = evaluate_translator(StandInTranslator(), pairs)["bleu"]
    first_only = sacrebleu.corpus_bleu(HYPOTHESES, [STREAMS[0]], tokenize="13a").score
    # Padding with "" makes empty references: BLEU's closest reference length for "Bonjour"
    # becomes 0, hiding its brevity.
    padded_with_empty = sacrebleu.corpus_bleu(
        HYPOTHESES, [[reference or "" for reference in stream] for stream in STREAMS], tokenize="13a"
    ).score
    # Pairs taken one by one, as if each were its own sentence: a source's other references count against it.
    pairwise = sacrebleu.corpus_bleu(
        [ANSWERS[source][0] for source in pairs.sources], [pairs.targets], tokenize="13a"
    ).score
    for wrong in (first_only, padded_with_empty, pairwise):
        assert abs(bleu - wrong) > 1, (bleu, first_only, padded_with_empty, pairwise)
    chrf = evaluate_translator(StandInTranslator(), pairs)["chrf"]
    assert abs(chrf - sacrebleu.corpus_chrf(HYPOTHESES, [STREAMS[0]]).score) > 1


def test_exact_match_is_against_any_reference_after_stripping(pairs):
    # "I am cold." and "Thank you very much." match a reference; "Hello." and "The cat sleeps." do not.
    assert evaluate_translator(StandInTranslator(), pairs)["exact_match"] == 0.5


def test_sources_are_translated_once_in_batches_with_the_decoding_settings(pairs):
    translator = StandInTranslator()
    metrics = evaluate_translator(translator, pairs, batch_size=3, num_beams=2, max_new_tokens=9)
    assert [sources for sources, _ in translator.calls] == [
        ["I am cold.", "Hello.", "Thank you very much."],
        ["The cat sleeps."],
    ]
    assert all(decoding == {"num_beams": 2, "max_new_tokens": 9} for _, decoding in translator.calls)
    assert metrics["num_beams"] == 2 and metrics["max_new_tokens"] == 9
    assert metrics["seconds"] > 0
    generated = sum(tokens for _, tokens in ANSWERS.values())
    assert metrics["tokens_per_second"] == pytest.approx(generated / metrics["seconds"])


def test_the_translators_own_defaults_are_resolved_once_and_reported(pairs):
    """A translator with decoding_controls (a real Translator) gets the resolved settings, and
    beam search is not sent the sampling ones it refuses."""
    export = {"max_new_tokens": 20, "max_new_tokens_limit": 63, "num_beams": 4, "length_penalty": 0.6, "temperature": 0.0}

    class WithDefaults(StandInTranslator):
        def decoding_controls(self, **decoding):
            return translation_controls(export, **decoding)

    translator = WithDefaults()
    metrics = evaluate_translator(translator, pairs)
    assert translator.calls[0][1] == {"max_new_tokens": 20, "num_beams": 4, "length_penalty": 0.6}
    assert (metrics["num_beams"], metrics["length_penalty"], metrics["temperature"], metrics["seed"]) == (4, 0.6, None, None)
    translator = WithDefaults()
    metrics = evaluate_translator(translator, pairs, num_beams=1, temperature=0.5, seed=3)
    assert translator.calls[0][1] == {"max_new_tokens": 20, "num_beams": 1, "length_penalty": 0.6, "temperature": 0.5, "seed": 3}
    assert (metrics["temperature"], metrics["seed"]) == (0.5, 3)
    with pytest.raises(InvalidInputError, match="beam search"):
        evaluate_translator(WithDefaults(), pairs, temperature=0.5)


def test_progress_goes_to_a_terminal_only():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal, log = Terminal(), io.StringIO()
    for stream in (terminal, log):
        translation_evaluation._progress(2, 4, stream)  # pylint: disable=protected-access
        translation_evaluation._progress(4, 4, stream)  # pylint: disable=protected-access
    assert terminal.getvalue() == "\rtranslating: 2/4 sentences (50%)\rtranslating: 4/4 sentences (100%)\n"
    assert log.getvalue() == ""


# === The Translator's argument checks (no export needed) ===

EXPORT = {"max_new_tokens": 20, "max_new_tokens_limit": 63, "num_beams": 4, "length_penalty": 0.6, "temperature": 0.0}


def _translator_without_a_model(calls):
    """A Translator whose config is EXPORT and whose translate signature is a stand-in that
    records its inputs: what translate() sends the SavedModel, without one."""
    translator = Translator.__new__(Translator)
    translator._config = {"task": "seq2seq", "export": dict(EXPORT)}  # pylint: disable=protected-access

    def signature(name, **inputs):
        calls.append((name, inputs))
        count = len(inputs["source"])
        return {
            "translation": np.array([source.upper() for source in inputs["source"]], dtype=object),
            "num_tokens": np.arange(count, dtype=np.int32),
            "score": np.full([count], -0.5, np.float32),
        }

    translator._signature = signature  # pylint: disable=protected-access
    return translator


def test_unset_controls_take_the_exports_defaults():
    controls = translation_controls(EXPORT)
    assert {key: value for key, value in controls.items() if key != "seed"} == {
        "max_new_tokens": 20, "temperature": 0.0, "num_beams": 4, "length_penalty": 0.6,
    }
    assert 0 <= controls["seed"] < 2**63


BAD_CONTROLS = {
    "temperature with the default beam search": (
        dict(temperature=0.7),
        "--temperature applies to sampling; beam search (--num_beams=4, this model's default) is deterministic and "
        "does not use --temperature: leave it unset, or sample with --num_beams=1",
    ),
    "seed and temperature with beams": (
        dict(num_beams=2, temperature=0.7, seed=1),
        "--temperature applies to sampling; beam search (--num_beams=2) is deterministic and does not use "
        "--temperature, --seed: leave them unset, or sample with --num_beams=1",
    ),
    "over the limit": (dict(max_new_tokens=64), "--max_new_tokens=64 must be an integer between 1 and this model's limit of 63"),
    "no tokens": (dict(max_new_tokens=0), "--max_new_tokens=0 must be an integer between 1 and this model's limit of 63"),
    "no beams": (dict(num_beams=0), "--num_beams=0 must be an integer between 1 (greedy or sampling) and 64"),
    "fractional beams": (dict(num_beams=2.5), "--num_beams=2.5 must be an integer"),
    "negative temperature": (dict(num_beams=1, temperature=-1.0), "--temperature=-1.0 must be 0 (greedy) or a positive number"),
    "infinite length penalty": (dict(length_penalty=float("inf")), "--length_penalty=inf must be a finite number"),
    "seed too large": (dict(num_beams=1, seed=2**63), "--seed=9223372036854775808 must be an integer that fits in a signed"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONTROLS))
def test_bad_controls_are_refused_naming_the_setting(case):
    arguments, expected = BAD_CONTROLS[case]
    with pytest.raises(InvalidInputError) as raised:
        translation_controls(EXPORT, prefix="--", **arguments)
    assert str(raised.value).startswith(expected), str(raised.value)


def test_translate_refuses_before_calling_the_model():
    calls = []
    translator = _translator_without_a_model(calls)
    with pytest.raises(InvalidInputError, match=r"^seed applies to sampling; beam search \(num_beams=3\)"):
        translator.translate(["Hello."], num_beams=3, seed=1)
    with pytest.raises(InvalidInputError, match="max_new_tokens=100 must be an integer between 1 and this model's limit of 63"):
        translator.translate("Hello.", max_new_tokens=100)
    with pytest.raises(InvalidInputError, match=r"sources\[1\] is of type bytes, not str"):
        translator.translate(["Hello.", b"bytes"])
    assert calls == []


def test_translate_sends_batches_with_one_value_per_source():
    calls = []
    translator = _translator_without_a_model(calls)
    assert translator.translate("hi") == ["HI"]
    name, inputs = calls[0]
    assert name == "translate"
    assert inputs["max_new_tokens"].dtype == np.int32 and inputs["max_new_tokens"].tolist() == [20]
    assert inputs["num_beams"].dtype == np.int32 and inputs["num_beams"].tolist() == [4]
    assert inputs["length_penalty"].dtype == np.float32 and inputs["length_penalty"].tolist() == [pytest.approx(0.6)]
    assert inputs["temperature"].dtype == np.float32 and inputs["seed"].dtype == np.int64

    calls.clear()
    sources = [f"sentence {index}" for index in range(Translator.BATCH_SIZE * 2 + 3)]
    results = translator.translate_with_details(sources, num_beams=1, temperature=0.5, seed=11, max_new_tokens=7)
    assert [len(inputs["source"]) for _, inputs in calls] == [Translator.BATCH_SIZE, Translator.BATCH_SIZE, 3]
    assert [result.text for result in results] == [source.upper() for source in sources]
    assert all(isinstance(result, Translation) and result.score == -0.5 for result in results)
    assert [result.num_tokens for result in results[:3]] == [0, 1, 2]
    for _, inputs in calls:
        assert set(inputs["seed"].tolist()) == {11} and set(inputs["max_new_tokens"].tolist()) == {7}
        assert set(inputs["temperature"].tolist()) == {0.5} and set(inputs["num_beams"].tolist()) == {1}
    assert translator.translate([]) == []
