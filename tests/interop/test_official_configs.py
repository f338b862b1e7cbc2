"""Released checkpoints as they are published: DeBERTa-v3's config.json (pos_att_type the string "p2c|c2p",
which transformers' DebertaV2Config splits) and its SentencePiece spm.model without a tokenizer.json, through
`--init-from`, `prepare --tokenizer` and `finetune --init`. No hub is reached: the folders are built here with
the published config's keys, tiny shapes, random weights and an spm.model trained with V3's settings."""

import argparse
import json

import pytest
import torch

from spanbert_ds.errors import UserError
from spanbert_ds.interop import hf as interop
from spanbert_ds.model.objectives import OBJECTIVES
from tests.data.test_tokenizer import SPM_PIECES, deberta_v3_tokenizer_folder
from tests.model.synthetic import synthetic_batch

transformers = pytest.importorskip("transformers")

# microsoft/deberta-v3-base's config.json as published (it has no pad_token_id, architectures or legacy)
DEBERTA_V3_BASE = {
    "model_type": "deberta-v2", "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
    "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072, "max_position_embeddings": 512,
    "relative_attention": True, "position_buckets": 256, "norm_rel_ebd": "layer_norm", "share_att_key": True,
    "pos_att_type": "p2c|c2p", "layer_norm_eps": 1e-7, "max_relative_positions": -1, "position_biased_input": False,
    "num_attention_heads": 12, "num_hidden_layers": 12, "type_vocab_size": 0, "vocab_size": 128100,
}
# The same keys at a tiny shape; 100 rows more than the tokenizer's ids, as V3's 128100 for 128001
TINY = {"vocab_size": SPM_PIECES + 100, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64}


def write_config(folder, **changes):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**DEBERTA_V3_BASE, **changes}, indent=2))
    return folder


def deberta_v3_folder(folder):
    """A DeBERTa-v3 folder as the hub ships it: config.json (published keys, tiny shape), the weights
    (random, moved off their initialisation, saved by transformers), spm.model and tokenizer_config.json."""
    torch.manual_seed(0)
    model = transformers.DebertaV2ForMaskedLM(transformers.DebertaV2Config(**{**DEBERTA_V3_BASE, **TINY})).eval()
    with torch.no_grad():
        for tensor in model.parameters():
            tensor.add_(torch.randn_like(tensor) * 0.05)
    model.save_pretrained(folder)
    write_config(folder, **TINY)  # as published: pos_att_type a string, no architectures
    return deberta_v3_tokenizer_folder(folder)


@pytest.fixture(scope="module")
def v3(tmp_path_factory):
    return deberta_v3_folder(tmp_path_factory.mktemp("deberta-v3-tiny"))


def test_deberta_v3_bases_published_config_loads(tmp_path):
    write_config(tmp_path)
    assert transformers.DebertaV2Config.from_pretrained(tmp_path).pos_att_type == ["p2c", "c2p"]
    config = interop.config_from_hf(tmp_path)
    assert (config.backbone, config.vocab_size, config.hidden_size, config.num_layers, config.num_heads,
            config.intermediate_size) == ("deberta", 128100, 768, 12, 12, 3072)
    assert (config.position_buckets, config.max_relative_positions, config.type_vocab_size, config.layer_norm_eps,
            config.pad_token_id, config.max_position_embeddings) == (256, -1, 0, 1e-7, 0, 512)


@pytest.mark.parametrize("pos_att_type", ["p2c|c2p", "c2p|p2c", " P2C | c2p ", ["p2c", "c2p"], ["c2p", "p2c"]])
def test_pos_att_type_is_taken_as_a_string_or_a_list_in_either_order(tmp_path, pos_att_type):
    write_config(tmp_path, pos_att_type=pos_att_type)
    assert interop.config_from_hf(tmp_path).backbone == "deberta"


@pytest.mark.parametrize("pos_att_type, message", [
    ("p2c|c2q", "pos_att_type 'p2c|c2q' has 'c2q', which DeBERTa does not know"),
    (["p2c", "cp2"], "has 'cp2', which DeBERTa does not know"),
    (7, "pos_att_type is 7; write it as DeBERTa V2/V3 configs do"),
    ("c2p", "a DeBERTa with pos_att_type='c2p'"),  # known, but the backbone has both
    ("p2c|c2p|p2p", "a DeBERTa with pos_att_type='p2c|c2p|p2p'"),  # V1's p2p
])
def test_a_pos_att_type_it_cannot_hold_is_one_line(tmp_path, pos_att_type, message):
    write_config(tmp_path, pos_att_type=pos_att_type)
    with pytest.raises(UserError, match=message) as error:
        interop.config_from_hf(tmp_path)
    assert "\n" not in str(error.value) and str(tmp_path / "config.json") in str(error.value)


def test_a_published_v3_folder_loads_with_transformers_outputs(v3):
    """The folder's config with the string pos_att_type: our encoder and MLM head give the numbers of
    transformers' DebertaV2Model and DebertaV2ForMaskedLM built from the same folder."""
    config = interop.config_from_hf(v3)
    objective = OBJECTIVES["roberta"](config).eval()
    report = interop.load_hf_into(objective, v3)
    assert report["initialised"] == [] and report["ignored"] == []
    batch = synthetic_batch(SPM_PIECES + 1, seq_len=48, masking="token")  # ids the tokenizer gives
    real = batch["attention_mask"].bool()
    encoder = transformers.DebertaV2Model.from_pretrained(v3).eval()
    masked_lm = transformers.DebertaV2ForMaskedLM.from_pretrained(v3).eval()
    assert encoder.config.pos_att_type == ["p2c", "c2p"]
    with torch.no_grad():
        hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        logits = masked_lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        ours = objective.encode(batch)[real]
        ours_logits = objective.mlm_head(ours)[:, :config.vocab_size]
    assert (ours - hidden[real]).abs().max() < 1e-5
    assert (ours_logits - logits[real]).abs().max() < 1e-4


@pytest.fixture(scope="module")
def v3_shards(tmp_path_factory, v3):
    from spanbert_ds.data.prepare import prepare
    from tests.conftest import SMALL_TEXT

    folder = tmp_path_factory.mktemp("v3-shards")
    (folder / "small.txt").write_text(SMALL_TEXT * 8)
    return prepare(folder / "small.txt", folder / "shards", tokenizer=str(v3))


@pytest.mark.parametrize("objective", ["deberta", "debertav3"])
def test_pretraining_starts_from_the_v3_folder_on_shards_of_its_spm_model(tmp_path, v3, v3_shards, objective):
    """train.py --init-from V3 --objective deberta|debertav3 on shards prepared with --tokenizer V3: the run is
    built (the model takes the folder's 1100 rows for the tokenizer's 1001 ids, as V3's 128100 for 128001),
    the weights load, and a batch of the shards gives a finite loss."""
    from spanbert_ds.data.loader import micro_batch_loader
    from spanbert_ds.train import loop

    assert (v3_shards.meta["tokenizer_kind"], v3_shards.vocab_size, v3_shards.meta["mask_id"]) == \
        ("unigram", SPM_PIECES + 1, SPM_PIECES)
    (tmp_path / "ds.json").write_text(json.dumps({"train_batch_size": 4, "train_micro_batch_size_per_gpu": 4,
                                                  "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}}))
    parser = argparse.ArgumentParser()
    loop.add_arguments(parser)
    args = parser.parse_args(["--deepspeed_config", str(tmp_path / "ds.json"), "--data", str(v3_shards.path),
                              "--output", str(tmp_path / "run"), "--objective", objective, "--init-from", str(v3),
                              "--max-seq-len", "64", "--steps", "2"])
    run = loop.prepare(args, 1, 0, hf=interop)
    assert (run.model_config.backbone, run.model_config.vocab_size) == ("deberta", SPM_PIECES + 100)
    batch = next(iter(micro_batch_loader(run.samples, run.masker, run.plan, 0, 1, 0)))
    assert batch["input_ids"].max() <= SPM_PIECES and (batch["input_ids"] == SPM_PIECES).any()  # [MASK]
    if objective == "debertav3":
        return  # the RTD objectives take no --init-from weights yet (the generator's tables); config and ids did
    torch.manual_seed(0)
    model = run.objective_class(run.model_config)
    report = interop.load_hf_into(model, v3)
    # everything but the EMD's absolute positions, which DebertaV2 has no place for
    assert report["initialised"] == ["encoder.embeddings.position.weight"] and report["ignored"] == []
    loss = model(batch)["loss"]
    assert torch.isfinite(loss)
    loss.backward()


def test_fine_tuning_opens_the_v3_folder_with_its_spm_tokenizer(v3):
    """finetune --init takes the released V3 folder as written: its config (pos_att_type a string), the deberta
    backbone, and its spm.model as the tokenizer, with every id inside the encoder's table."""
    from spanbert_ds.finetune.init import open_init, tokenizer_of

    init = open_init(str(v3), interop)
    assert (init.config.backbone, init.state) == ("deberta", None)  # the weights are read last
    assert tokenizer_of(init).get_vocab_size() == SPM_PIECES + 1
