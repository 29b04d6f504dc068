"""Config validation names the flag to change; config.json round-trips."""

import pytest

from keraslm.config import ModelConfig, RunConfig, TokenizerConfig, TrainConfig, load_run_config, save_run_config
from keraslm.errors import InvalidInputError


def test_hidden_dim_must_divide_by_num_heads():
    with pytest.raises(InvalidInputError, match="--hidden_dim=130 is not divisible by --num_heads=4"):
        ModelConfig(hidden_dim=130, num_heads=4).validate()
    ModelConfig(model="lstm", hidden_dim=130, num_heads=4).validate()  # heads mean nothing to an LSTM


@pytest.mark.parametrize(
    "config, message",
    [
        (TokenizerConfig(tokenizer="bpe"), "--tokenizer='bpe' is not known"),
        (ModelConfig(model="gru"), "--model='gru' is not known"),
        (ModelConfig(dropout=1.0), "--dropout=1.0"),
        (TrainConfig(train_data="x", batch_size=0), "--batch_size=0"),
        (TrainConfig(train_data="x", train_steps=50, warmup_steps=60), "--warmup_steps=60"),
        (TrainConfig(train_data=""), "--train_data is required"),
        (TrainConfig(train_data="x", valid_fraction=1.0), "--valid_fraction=1.0 must be between 0 and 1"),
        (TrainConfig(train_data="x", valid_fraction=float("nan")), "--valid_fraction=nan must be a finite number"),
        (TrainConfig(train_data="x", label_column=""), "--label_column is empty"),
        (TrainConfig(train_data="x", freeze_steps=5), "--freeze_steps=5 needs --init_from"),
        (TrainConfig(train_data="x", init_from="runs/lm", train_steps=10, freeze_steps=10), "--freeze_steps=10 must be smaller"),
        (
            RunConfig(task="lm", model=ModelConfig(truncation="head_tail"), train=TrainConfig(train_data="x")),
            "--truncation=head_tail is for --task=classify",
        ),
        (RunConfig(task="mlm", model=ModelConfig(model="lstm"), train=TrainConfig(train_data="x")), "--task=mlm pretrains"),
        (RunConfig(task="lm", train=TrainConfig(train_data="x", init_from="runs/lm")), "--init_from is for --task=classify"),
    ],
)
def test_bad_values_name_their_flag(config, message):
    with pytest.raises(InvalidInputError, match=message.replace("(", r"\(")):
        config.validate()


def test_automatic_warmup_fits_short_runs():
    assert TrainConfig(train_steps=2000).resolved_warmup_steps() == 100
    assert TrainConfig(train_steps=60).resolved_warmup_steps() == 3
    TrainConfig(train_data="x", train_steps=10).validate()


def test_config_json_round_trip(tmp_path):
    config = RunConfig(model=ModelConfig(model="lstm", hidden_dim=96), train=TrainConfig(train_data="a.txt", seed=3))
    save_run_config(config, tmp_path / "config.json")
    assert load_run_config(tmp_path / "config.json") == config


def test_unknown_field_in_config_json_is_named(tmp_path):
    (tmp_path / "config.json").write_text('{"task": "lm", "model": {"layers": 3}}')
    with pytest.raises(InvalidInputError, match="unknown field.*layers"):
        load_run_config(tmp_path / "config.json")
