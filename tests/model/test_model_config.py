import json
import os

import pytest

from spanbert_ds.errors import UserError
from spanbert_ds.model.config import PRESETS, ModelConfig


def test_presets_have_the_documented_shapes():
    shapes = {name: (c.num_layers, c.hidden_size, c.num_heads, c.intermediate_size) for name, c in PRESETS.items()}
    assert shapes["tiny"] == (2, 128, 2, 512)
    assert shapes["small"] == (4, 256, 4, 1024)
    assert shapes["bert-base"] == (12, 768, 12, 3072)
    assert shapes["bert-large"] == (24, 1024, 16, 4096)
    assert PRESETS["spanbert-base"].vocab_size == PRESETS["spanbert-large"].vocab_size == 28996
    assert PRESETS["bert-base"].vocab_size == 30522


def test_vocab_is_padded_to_a_multiple_of_64():
    assert PRESETS["bert-base"].padded_vocab_size == 30528
    assert PRESETS["spanbert-base"].padded_vocab_size == 29056
    assert ModelConfig(vocab_size=128).padded_vocab_size == 128


def test_json_round_trip(tmp_path):
    config = PRESETS["small"].replace(pre_layernorm=True, attention_backend="eager")
    config.to_json(tmp_path / "model.json")
    assert ModelConfig.from_json(tmp_path / "model.json") == config
    assert ModelConfig.from_name_or_path(str(tmp_path / "model.json")) == config


def test_name_with_overrides():
    config = ModelConfig.from_name_or_path("tiny,vocab_size=8000,pre_layernorm=true,attention_dropout=0")
    assert (config.vocab_size, config.pre_layernorm, config.attention_dropout, config.num_layers) == (8000, True, 0.0, 2)
    assert ModelConfig.from_name_or_path("tiny", vocab_size=77).vocab_size == 77


@pytest.mark.parametrize("spec, words", [
    ("nope", "neither a preset nor a JSON file"),
    ("tiny,vocab=3", "unknown key 'vocab'"),
    ("tiny,vocab_size=x", "is not a valid int"),
    ("tiny,attention_backend=magic", "attention_backend 'magic' is unknown"),
    ("tiny,num_heads=3", "not a multiple of num_heads"),
])
def test_bad_model_specs_say_what_is_wrong(spec, words):
    with pytest.raises(UserError, match=words):
        ModelConfig.from_name_or_path(spec)


def test_bad_json_names_the_file(tmp_path):
    (tmp_path / "m.json").write_text('{"hidden_size": 64, "colour": 1}')
    with pytest.raises(UserError, match="m.json: unknown keys \\['colour'\\]"):
        ModelConfig.from_json(tmp_path / "m.json")


def test_check_vocab_message():
    with pytest.raises(UserError, match="the vocabulary of the shards has 8000 tokens but the model was built for 30522; "
                                        "pass --model with vocab_size 8000"):
        PRESETS["tiny"].check_vocab(8000)
    PRESETS["tiny"].check_vocab(30522)


@pytest.mark.parametrize("spec, words", [
    ("deberta-tiny,rtd_weight=-1", "rtd_weight must be positive and finite"),
    ("deberta-tiny,rtd_weight=nan", "rtd_weight must be positive and finite"),
    ("deberta-tiny,rtd_weight=0", "rtd_weight must be positive and finite"),
    ("tiny,generator_width=0", "generator_width must be a fraction in \\(0, 1\\]"),
    ("tiny,generator_depth=0", "generator_depth must be a fraction in \\(0, 1\\]"),
    ("tiny,generator_width=nan", "generator_width must be a fraction in \\(0, 1\\]"),
    ("tiny,embedding_sharing=", "embedding_sharing '' is unknown"),
    ("tiny,layer_norm_eps=0", "layer_norm_eps must be positive and finite"),
    ("tiny,layer_norm_eps=inf", "layer_norm_eps must be positive and finite"),
    ("tiny,initializer_range=-0.02", "initializer_range must be positive and finite"),
    ("tiny,hidden_dropout=1", "hidden_dropout must be a probability in \\[0, 1\\)"),
    ("tiny,attention_dropout=nan", "attention_dropout must be a probability in \\[0, 1\\)"),
    ("tiny,pad_token_id=-1", "pad_token_id must be a token id"),
    ("tiny,vocab_size=100,pad_token_id=100", "pad_token_id 100 is not an id of the vocabulary of 100 tokens"),
    ("tiny,max_relative_positions=0", "max_relative_positions must be -1"),
    ("tiny,position_buckets=0", "position_buckets must be at least 1"),
])
def test_every_model_setting_is_checked_for_its_range(spec, words):
    with pytest.raises(UserError, match=f"^--model '{spec}': {words}"):
        ModelConfig.from_name_or_path(spec)


def test_an_rtd_setting_left_out_is_the_objectives_choice_and_one_given_is_kept():
    from spanbert_ds.model.objectives import OBJECTIVES

    assert PRESETS["tiny"].generator_width is None and "generator_width" not in PRESETS["tiny"].to_dict()
    electra = OBJECTIVES["electra"].configure(PRESETS["tiny"])
    assert (electra.generator_width, electra.generator_depth, electra.embedding_sharing) == (0.25, 1.0, "share")
    given = OBJECTIVES["electra"].configure(ModelConfig.from_name_or_path("tiny,generator_width=0.5"))
    assert given.generator_width == 0.5


def test_json_files_leave_unset_keys_out_and_old_files_with_zeros_still_load(tmp_path):
    PRESETS["tiny"].to_json(tmp_path / "new.json")
    assert "generator_width" not in (tmp_path / "new.json").read_text()
    assert ModelConfig.from_json(tmp_path / "new.json") == PRESETS["tiny"]
    # written before unset was a key left out: the three together meant the objective's choice
    old = {**PRESETS["tiny"].to_dict(), "generator_width": 0.0, "generator_depth": 0.0, "embedding_sharing": ""}
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert ModelConfig.from_json(tmp_path / "old.json") == PRESETS["tiny"]
    (tmp_path / "zero.json").write_text(json.dumps({**PRESETS["tiny"].to_dict(), "generator_width": 0}))
    with pytest.raises(UserError, match="zero.json: generator_width must be a fraction"):
        ModelConfig.from_json(tmp_path / "zero.json")


@pytest.mark.parametrize("key, value, words", [
    ("hidden_size", "128", "hidden_size must be a whole number, got '128'"),
    ("num_layers", 2.5, "num_layers must be a whole number, got 2.5"),
    ("unpad", "yes", "unpad must be true or false, got 'yes'"),
    ("rtd_weight", None, "rtd_weight must be a number, got None"),
])
def test_a_json_value_of_the_wrong_kind_is_refused(tmp_path, key, value, words):
    (tmp_path / "m.json").write_text(json.dumps({key: value}))
    with pytest.raises(UserError, match=f"m.json: {words}"):
        ModelConfig.from_json(tmp_path / "m.json")


@pytest.mark.slow
def test_train_py_refuses_a_negative_rtd_weight_in_one_line(tmp_path, python_docs_shards):
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    (tmp_path / "ds.json").write_text(json.dumps({"train_batch_size": 8, "train_micro_batch_size_per_gpu": 8,
                                                  "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}}))
    done = subprocess.run([sys.executable, os.path.join(repo, "train.py"), "--deepspeed_config",
                           str(tmp_path / "ds.json"), "--data", str(python_docs_shards.path), "--output",
                           str(tmp_path / "run"), "--objective", "debertav3", "--model", "deberta-tiny,rtd_weight=-1",
                           "--max-seq-len", "64", "--steps", "2"], capture_output=True, text=True, timeout=300,
                          cwd=repo, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [
        "train.py: error: --model 'deberta-tiny,rtd_weight=-1': rtd_weight must be positive and finite "
        "(lambda, the discriminator loss's weight; ELECTRA: 50), got -1.0"]
    assert not (tmp_path / "run").exists()
