"""The deberta backbone against transformers' DebertaV2 on the same weights (both ways through
interop/hf.py), its log buckets, its attention backends, and the enhanced mask decoder."""

import json

import pytest
import torch

from spanbert_ds.errors import UserError
from spanbert_ds.interop import hf as interop
from spanbert_ds.model.deberta import relative_positions
from spanbert_ds.model.objectives import OBJECTIVES
from tests.model.synthetic import synthetic_batch, tiny_config

transformers = pytest.importorskip("transformers")
from transformers.models.deberta_v2 import modeling_deberta_v2 as reference  # noqa: E402

V = 120


def hf_deberta(tmp_path, legacy=False, **changes):
    """A random DebertaV2ForMaskedLM of V3's kind (small, with few buckets so that the log buckets matter),
    every tensor moved off its initialisation, saved by transformers."""
    torch.manual_seed(0)
    values = dict(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                  max_position_embeddings=64, type_vocab_size=0, relative_attention=True, pos_att_type=["p2c", "c2p"],
                  position_buckets=8, max_relative_positions=64, share_att_key=True, norm_rel_ebd="layer_norm",
                  position_biased_input=False, layer_norm_eps=1e-7, pad_token_id=0, legacy=legacy)
    config = transformers.DebertaV2Config(**{**values, **changes})
    model = transformers.DebertaV2ForMaskedLM(config).eval()
    with torch.no_grad():
        for tensor in model.parameters():
            tensor.add_(torch.randn_like(tensor) * 0.05)
    model.save_pretrained(tmp_path)
    return model


def mlm_logits(objective, batch):
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        hidden = objective.encode(batch)
        return hidden[real], objective.mlm_head(hidden[real])


@pytest.mark.parametrize("length, buckets, span", [(10, 256, 512), (300, 256, 512), (1100, 256, 512), (100, 8, 64)])
def test_log_buckets_match_transformers(length, buckets, span):
    config = tiny_config(backbone="deberta", position_buckets=buckets, max_relative_positions=span)
    ours = relative_positions(length, config, "cpu")
    x = torch.zeros(1, length, 1)
    theirs = reference.build_relative_position(x, x, bucket_size=buckets, max_position=span)[0]
    assert torch.equal(ours, theirs)
    if length <= span:  # every distance the buckets span has a row of the 2 x buckets table (longer: clamped)
        assert ours.abs().max() < buckets


@pytest.mark.parametrize("legacy", [False, True])
def test_a_deberta_v2_from_transformers_loads_with_equal_hidden_states_and_logits(tmp_path, legacy):
    model = hf_deberta(tmp_path, legacy=legacy)
    config = interop.config_from_hf(tmp_path)
    assert (config.backbone, config.position_buckets, config.type_vocab_size, config.emd) == ("deberta", 8, 0, False)
    objective = OBJECTIVES["roberta"](config).eval()
    report = interop.load_hf_into(objective, tmp_path)
    assert report["initialised"] == [] and report["ignored"] == []
    batch = synthetic_batch(V, seq_len=48, masking="token")
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    hidden, logits = mlm_logits(objective, batch)
    assert (hidden - out.hidden_states[-1][real]).abs().max() < 1e-5
    assert (logits - out.logits[real]).abs().max() < 1e-4


def test_ours_exported_opens_in_transformers_with_equal_outputs(tmp_path):
    torch.manual_seed(0)
    objective = OBJECTIVES["spanbert"](tiny_config(vocab_size=V, backbone="deberta", position_buckets=8,
                                                   max_relative_positions=64, max_position_embeddings=64)).eval()
    interop.export_hf(objective, objective.config, None, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["DebertaV2ForMaskedLM"] and config["model_type"] == "deberta-v2"
    model, info = transformers.DebertaV2ForMaskedLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    batch = synthetic_batch(V, seq_len=48, masking="span")
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        out = model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           token_type_ids=batch["token_type_ids"], output_hidden_states=True)
    hidden, logits = mlm_logits(objective, batch)
    assert (hidden - out.hidden_states[-1][real]).abs().max() < 1e-5
    assert (logits - out.logits[real]).abs().max() < 1e-4
    assert (tmp_path / "sbo_head.safetensors").exists()  # spanbert on a deberta backbone keeps its SBO head


def test_the_deberta_objective_round_trips_with_its_emd_positions(tmp_path):
    torch.manual_seed(0)
    objective = OBJECTIVES["deberta"](tiny_config(vocab_size=V, position_buckets=8, max_position_embeddings=64))
    assert objective.config.backbone == "deberta" and objective.config.emd
    interop.export_hf(objective.state_dict(), objective.config, None, tmp_path)
    assert (tmp_path / "emd.safetensors").exists()
    torch.manual_seed(1)
    fresh = OBJECTIVES["deberta"](interop.config_from_hf(tmp_path))
    report = interop.load_hf_into(fresh, tmp_path)
    assert report["initialised"] == [] and report["ignored"] == []
    a, b = objective.state_dict(), fresh.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_emd_brings_absolute_positions_in_and_the_loss_falls():
    torch.manual_seed(0)
    objective = OBJECTIVES["deberta"](tiny_config(vocab_size=V, position_buckets=8, max_position_embeddings=64))
    batch = synthetic_batch(V, seq_len=48, masking="token")
    objective.eval()
    with torch.no_grad():
        before = objective.encode(batch)
        objective.encoder.embeddings.position.weight.add_(1.0)
        assert not torch.allclose(before, objective.encode(batch))  # the EMD's positions reach the output
    objective.train()
    optimizer = torch.optim.AdamW(objective.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = objective(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(p.grad is not None for p in objective.parameters() if p.requires_grad)


@pytest.mark.parametrize("emd", [False, True])
def test_sdpa_and_eager_agree(emd):
    torch.manual_seed(0)
    config = tiny_config(vocab_size=V, backbone="deberta", position_buckets=8, max_position_embeddings=64, emd=emd)
    eager = OBJECTIVES["roberta"](config.replace(attention_backend="eager")).eval()
    sdpa = OBJECTIVES["roberta"](config.replace(attention_backend="sdpa")).eval()
    sdpa.load_state_dict(eager.state_dict())
    batch = synthetic_batch(V, seq_len=48, masking="token")
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        assert (eager.encode(batch)[real] - sdpa.encode(batch)[real]).abs().max() < 1e-5


def test_a_bert_checkpoint_cannot_start_a_deberta_model(tmp_path):
    bert = OBJECTIVES["roberta"](tiny_config(vocab_size=V))
    interop.export_hf(bert, bert.config, None, tmp_path)
    deberta = OBJECTIVES["roberta"](tiny_config(vocab_size=V, backbone="deberta"))
    with pytest.raises(UserError, match="a roberta checkpoint cannot start a model with the deberta backbone"):
        interop.load_hf_into(deberta, tmp_path)


def test_deberta_configs_it_cannot_hold_are_one_line(tmp_path):
    hf_deberta(tmp_path, position_biased_input=True)
    with pytest.raises(UserError, match="position_biased_input=True"):
        interop.config_from_hf(tmp_path)


def test_the_relative_index_the_kernel_reads_is_the_eager_paths_gather_index():
    from spanbert_ds.model.attention import relative_index
    from spanbert_ds.model.deberta import relative_rows

    config = tiny_config(backbone="deberta", position_buckets=8, max_relative_positions=64)
    rel_pos = relative_positions(100, config, "cpu")
    rows = relative_rows(100, config, "cpu")
    index = relative_index(rows)
    i, j = torch.meshgrid(torch.arange(100), torch.arange(100), indexing="ij")
    assert torch.equal(rows, (rel_pos + 8).clamp(0, 15))
    assert torch.equal(index[i - j + 99].long(), (rel_pos + 8).clamp(0, 15))
    assert torch.equal(rows.T, (-rel_pos + 8).clamp(0, 15))  # what p2c gathers at: the row of j - i


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("emd", [False, True])
@pytest.mark.slow
def test_unpadded_layers_give_the_padded_numbers(backend, emd):
    torch.manual_seed(0)
    config = tiny_config(vocab_size=V, backbone="deberta", position_buckets=8, max_position_embeddings=64, emd=emd,
                         attention_backend=backend, hidden_dropout=0.0, attention_dropout=0.0)
    padded = OBJECTIVES["roberta"](config.replace(unpad=False))
    unpadded = OBJECTIVES["roberta"](config.replace(unpad=True))
    unpadded.load_state_dict(padded.state_dict())
    batch = synthetic_batch(V, seq_len=48, masking="token")
    assert not batch["attention_mask"].bool().all()  # the batch has padding to take out
    losses = [model(batch)["loss"] for model in (padded, unpadded)]
    for loss in losses:
        loss.backward()
    assert abs(losses[0].item() - losses[1].item()) < 1e-5
    for (name, a), b in zip(padded.named_parameters(), unpadded.parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4, msg=name)
