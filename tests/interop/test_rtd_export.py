"""Replaced-token detection's two networks exported to Hugging Face (interop/rtd_hf.py), checked against
transformers itself: ELECTRA's as ElectraForPreTraining and ElectraForMaskedLM, DeBERTaV3's as DebertaV2Model
(+ rtd_head.safetensors) and DebertaV2ForMaskedLM, under each way of sharing the embedding tables."""

import json

import pytest
import torch

from spanbert_ds.cli import main
from spanbert_ds.errors import UserError
from spanbert_ds.interop import hf as interop
from spanbert_ds.interop import rtd_hf
from spanbert_ds.model.heads import gather_rows
from spanbert_ds.model.objectives import OBJECTIVES, aliases
from tests.interop.test_export import fused_fp16_optimizer_state, zero0_run
from tests.interop.test_hf import wordpiece
from tests.model.synthetic import synthetic_batch, tiny_config

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tokenizer():
    return wordpiece(lowercase=True)


def rtd_objective(name, sharing, vocab_size=100, **changes):
    """A tiny RTD objective with every tensor moved off its initialisation: zeros and ones (the GDES delta, the
    biases, the LayerNorms) would hide a tensor exported in the wrong place, or not at all."""
    torch.manual_seed(0)
    objective = OBJECTIVES[name](tiny_config(vocab_size=vocab_size, embedding_sharing=sharing,
                                             attention_backend="eager", **changes))
    with torch.no_grad():
        for tensor in objective.parameters():
            tensor.add_(torch.randn_like(tensor) * 0.05)
    return objective.eval()


def load(cls, folder):
    """The HF model of `folder`, checked to have loaded every tensor it has and used every tensor given."""
    model, info = cls.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def inputs(objective, batch):
    """The same input to our networks and HF's: padded sequences, with segments where the model has them."""
    token_types = batch["token_type_ids"] if objective.config.type_vocab_size else None
    return batch["input_ids"], batch["attention_mask"], token_types


def hf_inputs(objective, batch):
    ids, mask, token_types = inputs(objective, batch)
    return {"input_ids": ids, "attention_mask": mask, **({"token_type_ids": token_types} if token_types is not None
                                                         else {})}


def generator_logits(objective, model, batch):
    """(ours, HF's) generator logits at the masked positions."""
    positions = batch["mlm_positions"]
    with torch.no_grad():
        ours = objective.generator(*inputs(objective, batch), positions)
        theirs = model(**hf_inputs(objective, batch)).logits
    return ours, theirs.reshape(-1, theirs.shape[-1])[positions]


def tensors(folder, name="model.safetensors"):
    from safetensors.torch import load_file

    return load_file(folder / name)


@pytest.mark.parametrize("sharing", ["none", "share", "gdes"])
def test_electra_exports_as_electra_for_pretraining_and_masked_lm(tmp_path, tokenizer, sharing):
    V = tokenizer.get_vocab_size()
    objective = rtd_objective("electra", sharing, vocab_size=V)
    batch = synthetic_batch(V, masking="token", pair=True)  # padding, and two segments
    real = batch["attention_mask"].bool()

    interop.export_hf(objective, objective.config, tokenizer, tmp_path / "discriminator")
    config = json.loads((tmp_path / "discriminator" / "config.json").read_text())
    assert config["architectures"] == ["ElectraForPreTraining"] and config["model_type"] == "electra"
    assert config["embedding_size"] == config["hidden_size"] == 128 and config["hidden_act"] == "gelu"
    model = load(transformers.ElectraForPreTraining, tmp_path / "discriminator")
    with torch.no_grad():
        ours = objective.rtd_head(objective.encoder(*inputs(objective, batch)))
        theirs = model(**hf_inputs(objective, batch)).logits
    assert (ours[real] - theirs[real]).abs().max() < 1e-5
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "discriminator")
    assert hf_tok("the quick fox", add_special_tokens=False)["input_ids"] == tokenizer.encode("the quick fox").ids

    interop.export_hf(objective, objective.config, tokenizer, tmp_path / "generator", generator=True)
    config = json.loads((tmp_path / "generator" / "config.json").read_text())
    assert config["architectures"] == ["ElectraForMaskedLM"]
    # Shared tables keep the discriminator's width and are projected down to the generator's 32.
    assert (config["hidden_size"], config["num_attention_heads"]) == (32, 1)
    assert config["embedding_size"] == (32 if sharing == "none" else 128)
    assert ("electra.embeddings_project.weight" in tensors(tmp_path / "generator")) is (sharing != "none")
    model = load(transformers.ElectraForMaskedLM, tmp_path / "generator")
    assert torch.equal(model.generator_lm_head.weight, model.electra.embeddings.word_embeddings.weight)  # tied
    ours, theirs = generator_logits(objective, model, batch)
    assert (ours - theirs).abs().max() < 1e-4


def test_under_gdes_the_discriminator_exports_e_g_plus_e_delta_and_the_generator_e_g(tmp_path):
    objective = rtd_objective("electra", "gdes")
    interop.export_hf(objective, objective.config, None, tmp_path / "d")
    interop.export_hf(objective, objective.config, None, tmp_path / "g", generator=True)
    word = objective.encoder.embeddings.word
    e_g, e_delta = word.shared_weight.detach()[:100], word.delta.detach()[:100]
    assert torch.equal(tensors(tmp_path / "d")["electra.embeddings.word_embeddings.weight"], e_g + e_delta)
    assert torch.equal(tensors(tmp_path / "g")["electra.embeddings.word_embeddings.weight"], e_g)


@pytest.mark.parametrize("sharing", ["gdes", "none"])
def test_debertav3_exports_as_deberta_v2_model_and_masked_lm(tmp_path, sharing):
    objective = rtd_objective("debertav3", sharing)
    batch = synthetic_batch(100, masking="token")
    real = batch["attention_mask"].bool()

    interop.export_hf(objective, objective.config, None, tmp_path / "discriminator")
    config = json.loads((tmp_path / "discriminator" / "config.json").read_text())
    assert config["architectures"] == ["DebertaV2Model"] and config["model_type"] == "deberta-v2"
    assert all(k.startswith("deberta.") for k in tensors(tmp_path / "discriminator"))
    model = load(transformers.DebertaV2Model, tmp_path / "discriminator")
    with torch.no_grad():
        ours = objective.encoder(*inputs(objective, batch))
        theirs = model(**hf_inputs(objective, batch)).last_hidden_state
    assert (ours[real] - theirs[real]).abs().max() < 1e-5
    head = tensors(tmp_path / "discriminator", rtd_hf.RTD_FILE)  # beside the model, under our names
    assert head.keys() == {"rtd_head." + k for k in objective.rtd_head.state_dict()}
    assert {"rtd_head.ln.weight", "rtd_head.ln.bias"} <= head.keys()  # DeBERTaV3's head (LMMaskPredictionHead)
    assert all(torch.equal(head["rtd_head." + k], v) for k, v in objective.rtd_head.state_dict().items())
    # the position table the discriminator holds for the generator's EMD is not the discriminator's to export
    assert not (tmp_path / "discriminator" / interop.EMD_FILE).exists()

    interop.export_hf(objective, objective.config, None, tmp_path / "generator", generator=True)
    config = json.loads((tmp_path / "generator" / "config.json").read_text())
    assert config["architectures"] == ["DebertaV2ForMaskedLM"] and config["num_hidden_layers"] == 1  # half the layers
    model = load(transformers.DebertaV2ForMaskedLM, tmp_path / "generator")
    # The generator predicts through the EMD, which DebertaV2 has not: its position table goes to emd.safetensors,
    # and the folder round-trips into our deberta objective (the EMD's), which predicts as the generator does.
    positions = tensors(tmp_path / "generator", interop.EMD_FILE)["encoder.embeddings.position.weight"]
    assert torch.equal(positions, objective.generator.encoder.embeddings.position.weight)
    back = OBJECTIVES["deberta"](interop.config_from_hf(tmp_path / "generator").replace(attention_backend="eager"))
    interop.load_hf_into(back, tmp_path / "generator")
    back.eval()
    ids, mask, _ = inputs(objective, batch)
    with torch.no_grad():
        ours = objective.generator(ids, mask, None, batch["mlm_positions"])
        again = back.mlm_head(gather_rows(back.encoder(ids, mask), batch["mlm_positions"]))
    assert (ours - again).abs().max() < 1e-5


def test_a_debertav3_generator_without_the_emd_exports_as_deberta_v2_for_masked_lm(tmp_path):
    objective = rtd_objective("debertav3", "gdes", generator_emd=False)
    batch = synthetic_batch(100, masking="token")
    interop.export_hf(objective, objective.config, None, tmp_path / "generator", generator=True)
    ours, theirs = generator_logits(objective, load(transformers.DebertaV2ForMaskedLM, tmp_path / "generator"), batch)
    assert (ours - theirs).abs().max() < 1e-4


def test_electras_head_is_the_only_one_electra_for_pretraining_holds(tmp_path):
    objective = rtd_objective("electra", "share", rtd_head="debertav3")
    with pytest.raises(UserError, match="rtd_head is 'debertav3'"):
        interop.export_hf(objective, objective.config, None, tmp_path / "d")


@pytest.mark.parametrize("name", ["electra", "debertav3"])
def test_a_state_dict_exports_as_its_objective_does_even_with_16_bit_second_names(tmp_path, name):
    """ZeRO-0 keeps fp32 masters for a shared table's first name only; the second names (the generator's view
    of the tables, the tied decoder) hold 16-bit copies, which must not reach the export."""
    objective = rtd_objective(name, "gdes")
    state = objective.state_dict()
    second = aliases(objective)
    assert second
    state.update({k: state[k].bfloat16() for k in second})
    for generator in (False, True):
        interop.export_hf(objective, objective.config, None, tmp_path / f"module{generator}", generator=generator)
        interop.export_hf(state, objective.config, None, tmp_path / f"state{generator}", generator=generator)
        a, b = tensors(tmp_path / f"module{generator}"), tensors(tmp_path / f"state{generator}")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_export_command_writes_either_network_of_a_run(tmp_path, capsys, tokenizer):
    """Through `spanbert-ds export` on a ZeRO-0 run folder whose module is saved in bf16 (the masters in the
    optimizer state): what load_run rebuilds is exported, as the objective itself would be."""
    V = tokenizer.get_vocab_size()
    objective = rtd_objective("electra", "gdes", vocab_size=V)
    run = zero0_run(tmp_path, objective, fused_fp16_optimizer_state(objective), tokenizer)
    for flags, folder, architecture in (([], "d", "ElectraForPreTraining"),
                                        (["--generator"], "g", "ElectraForMaskedLM")):
        assert main(["export", run, str(tmp_path / folder), *flags]) == 0
        assert f"transformers.{architecture}.from_pretrained" in capsys.readouterr().out
        interop.export_hf(objective, objective.config, None, tmp_path / f"{folder}_direct", generator=bool(flags))
        a, b = tensors(tmp_path / folder), tensors(tmp_path / f"{folder}_direct")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert (tmp_path / folder / "vocab.txt").exists()


def test_generator_of_a_model_without_one_is_a_one_line_user_error(tmp_path, capsys, tokenizer):
    objective = OBJECTIVES["spanbert"](tiny_config())
    with pytest.raises(UserError, match="the spanbert objective has no generator"):
        interop.export_hf(objective, objective.config, None, tmp_path / "hf", generator=True)
    run = tmp_path / "run"  # refused from run_config.json, before the checkpoint is read
    run.mkdir()
    (run / "run_config.json").write_text(json.dumps({"objective": "spanbert"}))
    assert main(["export", str(run), str(tmp_path / "hf"), "--generator"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a run of the spanbert objective, has no generator" in err
    assert not (tmp_path / "hf").exists()


def test_a_deberta_generator_narrower_than_the_tables_it_shares_is_a_user_error(tmp_path):
    """DebertaV2 projects the embeddings before their LayerNorm, without a bias; ELECTRA (and we) after it, with
    one: electra on a deberta backbone with its default quarter-width generator has no DebertaV2ForMaskedLM."""
    objective = rtd_objective("electra", "share", backbone="deberta", type_vocab_size=0)
    with pytest.raises(UserError, match="no DebertaV2ForMaskedLM holds it"):
        interop.export_hf(objective, objective.config, None, tmp_path / "g", generator=True)
    interop.export_hf(objective, objective.config, None, tmp_path / "d")  # its discriminator is a DebertaV2Model
    load(transformers.DebertaV2Model, tmp_path / "d")


@pytest.mark.slow  # trains (one rank, two steps)
@pytest.mark.parametrize("objective, model", [("electra", "tiny,embedding_sharing=gdes"),
                                              # without the EMD, which DebertaV2ForMaskedLM has not (the EMD's
                                              # export is round-tripped above)
                                              ("debertav3", "deberta-tiny,generator_emd=false")])
def test_a_trained_run_exports_both_networks_with_equal_outputs(tmp_path, python_docs_shards, objective, model):
    from spanbert_ds.run.folder import load_run
    from tests.distributed.launch import launch
    from tests.distributed.test_pretrain import check, ds_config, train_args

    run = str(tmp_path / "run")
    args = train_args(str(python_docs_shards.path), run, ds_config(tmp_path, 2), steps=2)
    args[args.index("--model") + 1] = model
    args[args.index("--objective") + 1] = objective
    check(launch(args, ranks=1, launcher="python"))
    assert main(["export", run, str(tmp_path / "d")]) == 0
    assert main(["export", run, str(tmp_path / "g"), "--generator"]) == 0
    trained, _ = load_run(run)  # ZeRO-2 shards consolidated
    trained.eval()
    batch = synthetic_batch(trained.config.vocab_size, seq_len=32, masking="token")
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        hidden = trained.encoder(*inputs(trained, batch))
        if objective == "electra":
            ours = trained.rtd_head(hidden)
            theirs = load(transformers.ElectraForPreTraining, tmp_path / "d")(**hf_inputs(trained, batch)).logits
        else:
            ours = hidden
            theirs = load(transformers.DebertaV2Model, tmp_path / "d")(**hf_inputs(trained, batch)).last_hidden_state
    assert (ours[real] - theirs[real]).abs().max() < 1e-5
    generator = transformers.ElectraForMaskedLM if objective == "electra" else transformers.DebertaV2ForMaskedLM
    ours, theirs = generator_logits(trained, load(generator, tmp_path / "g"), batch)
    assert (ours - theirs).abs().max() < 1e-4
