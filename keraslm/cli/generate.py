"""keraslm-generate: continue prompts with an exported language model.

  keraslm-generate --model_dir=saved_models/shakespeare --prompt="ROMEO:" --max_new_tokens=200 --seed=1
  keraslm-generate --model_dir=saved_models/shakespeare --prompt_file=prompts.txt --num_samples=3 --top_p=0.9
"""

import sys

from absl import flags

from keraslm.cli.common import check_utf8_flag, run_main

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("model_dir", "", "A SavedModel version directory, or its base directory (latest version) (required).")
    flags.DEFINE_multi_string("prompt", [], "Text to continue; repeat the flag for several prompts. Empty starts from a line break.")
    flags.DEFINE_string("prompt_file", "", "UTF-8 file with one prompt per line (added after any --prompt).")
    flags.DEFINE_integer("max_new_tokens", 200, "Tokens to generate per sample.")
    flags.DEFINE_float("temperature", 0.8, "Sampling temperature; 0 is greedy (always the most likely token).")
    flags.DEFINE_integer("top_k", 0, "Sample only among the k most likely tokens; 0 turns it off.")
    flags.DEFINE_float("top_p", 1.0, "Sample only within the smallest set of tokens whose probability reaches p; 1 turns it off.")
    flags.DEFINE_float("repetition_penalty", 1.0, "Penalize tokens already in the prompt or output (CTRL); 1 turns it off, 1.2 is typical.")
    flags.DEFINE_string("stop", "", "Stop a sample when this text appears, and cut it there; empty for none.")
    flags.DEFINE_integer("num_samples", 1, "Samples per prompt; sample i uses seed + i.")
    flags.DEFINE_integer(
        "num_beams", 1, "Beam search with this many beams when > 1 (deterministic; the sampling flags do not apply and are refused)."
    )
    flags.DEFINE_integer("seed", None, "Random seed; the same seed, prompt and settings give the same text. Unset: random.")


# Flags that steer sampling; beam search refuses them rather than ignore them.
SAMPLING_FLAGS = ("temperature", "top_k", "top_p", "repetition_penalty", "seed", "num_samples")


def _prompts():
    prompts = list(FLAGS.prompt)
    if FLAGS.prompt_file:
        # Imported only here: keraslm.data imports tensorflow-text's Python package, which imports
        # Keras (about 1.5 s here).
        from keraslm.data import read_text_file

        # Empty lines are skipped: a trailing newline should not add a prompt.
        prompts += [line for line in read_text_file(FLAGS.prompt_file, "--prompt_file").splitlines() if line]
    return prompts or [""]


def main(argv):
    del argv
    from keraslm.errors import InvalidInputError
    from keraslm.inference import LanguageModel

    if not FLAGS.model_dir:
        raise InvalidInputError("--model_dir is required: the --export_dir of keraslm-train or keraslm-export")
    for name, minimum in (("max_new_tokens", 1), ("num_samples", 1), ("num_beams", 1), ("top_k", 0)):
        if FLAGS[name].value < minimum:
            raise InvalidInputError(f"--{name}={FLAGS[name].value} must be at least {minimum}")
    if FLAGS.num_beams > 1:
        given = [f"--{name}" for name in SAMPLING_FLAGS if FLAGS[name].present]
        if given:
            raise InvalidInputError(
                f"{given[0]} applies to sampling; beam search (--num_beams={FLAGS.num_beams}) is deterministic and does "
                f"not use {', '.join(given)}: drop {'it' if len(given) == 1 else 'them'}, or sample with --num_beams=1"
            )
    if FLAGS.temperature < 0:
        raise InvalidInputError(f"--temperature={FLAGS.temperature} must be 0 (greedy) or positive")
    if not 0 < FLAGS.top_p <= 1:
        raise InvalidInputError(f"--top_p={FLAGS.top_p} must be in (0, 1]")
    if FLAGS.repetition_penalty <= 0:
        raise InvalidInputError(f"--repetition_penalty={FLAGS.repetition_penalty} must be positive")
    check_utf8_flag("prompt", FLAGS.prompt, ", or put the prompts in a UTF-8 file for --prompt_file")
    check_utf8_flag("stop", [FLAGS.stop])
    prompts = _prompts()
    model = LanguageModel(FLAGS.model_dir)
    limit = model.config["export"]["max_new_tokens_limit"]
    if FLAGS.max_new_tokens > limit:
        raise InvalidInputError(f"--max_new_tokens={FLAGS.max_new_tokens} is above this model's limit of {limit}")
    if FLAGS.num_beams > 1:
        texts = model.generate(prompts, max_new_tokens=FLAGS.max_new_tokens, stop=FLAGS.stop, num_beams=FLAGS.num_beams)
    else:
        texts = model.generate(
            prompts,
            max_new_tokens=FLAGS.max_new_tokens,
            temperature=FLAGS.temperature,
            top_k=FLAGS.top_k,
            top_p=FLAGS.top_p,
            repetition_penalty=FLAGS.repetition_penalty,
            seed=FLAGS.seed,
            stop=FLAGS.stop,
            num_samples=FLAGS.num_samples,
        )
    per_prompt = len(texts) // len(prompts)
    for index, text in enumerate(texts):
        prompt = prompts[index // per_prompt]
        if len(texts) > 1:
            sys.stdout.write(f"=== prompt {index // per_prompt + 1}, sample {index % per_prompt + 1} ===\n")
        sys.stdout.write(prompt + text + "\n")
    sys.stdout.flush()


def run():
    define_flags()
    run_main(main, "keraslm-generate")


if __name__ == "__main__":
    run()
