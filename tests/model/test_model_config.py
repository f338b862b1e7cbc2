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
