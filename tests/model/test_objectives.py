import pytest
import torch

from spanbert_ds.errors import UserError
from spanbert_ds.model.objectives import OBJECTIVES
from tests.model.synthetic import synthetic_batch, tiny_config

BATCH_KIND = {"spanbert": dict(masking="span"), "bert": dict(masking="token", pair=True),
              "roberta": dict(masking="token"), "deberta": dict(masking="token")}
# The objectives whose encoder makes the MLM predictions; tests/model/test_rtd.py covers ELECTRA's and DeBERTaV3's.
MLM_OBJECTIVES = [name for name, objective in OBJECTIVES.items() if objective.encoder_predicts_masked]
PARTS = {"spanbert": {"mlm_loss", "sbo_loss"}, "bert": {"mlm_loss", "nsp_loss"}, "roberta": {"mlm_loss"},
         "deberta": {"mlm_loss"}}


def build(name, **changes):
    torch.manual_seed(0)
    return OBJECTIVES[name](tiny_config(**changes))


def batch_for(name, **kwargs):
    return synthetic_batch(100, **{**BATCH_KIND[name], **kwargs})


def test_registry_says_what_data_each_objective_needs():
    assert isinstance(OBJECTIVES, dict)
    assert {n: (c.masking, c.packing) for n, c in OBJECTIVES.items()} == {
        "spanbert": ("span", "doc"), "bert": ("token", "pair"), "roberta": ("token", "full"),
        "deberta": ("token", "full"), "electra": ("token", "full"), "debertav3": ("token", "full")}


@pytest.mark.parametrize("name", MLM_OBJECTIVES)
@pytest.mark.slow
def test_loss_falls_when_overfitting_one_batch(name):
    objective = build(name)
    batch = batch_for(name)
    optimizer = torch.optim.AdamW(objective.parameters(), lr=2e-3)
    losses = []
    for _ in range(25):
        out = objective(batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
    assert set(out) == {"loss"} | PARTS[name]
    assert all(not v.requires_grad for k, v in out.items() if k != "loss")
    assert losses[-1] < 0.3 * losses[0], losses
    assert abs(out["loss"].item() - sum(out[k].item() for k in PARTS[name])) < 1e-5


def test_roberta_has_no_segment_embeddings():
    objective = build("roberta")
    assert objective.encoder.embeddings.token_type is None and objective.config.type_vocab_size == 0
    assert not any("token_type" in n for n, _ in objective.named_parameters())


def test_heads_only_see_masked_rows_and_real_targets():
    objective = build("spanbert")
    batch = batch_for("spanbert")
    rows = {}
    for head in ("mlm_head", "sbo_head"):
        getattr(objective, head).register_forward_hook(
            lambda module, args, out, head=head: rows.__setitem__(head, (tuple(args[0].shape), tuple(out.shape))))
    objective(batch)
    N, M, H, V = len(batch["mlm_positions"]), len(batch["sbo_labels"]), 128, 100
    assert 0 < M <= N < batch["input_ids"].numel() // 3
    # In training the heads take the gathered rows and return their summed loss ...
    assert rows == {"mlm_head": ((N, H), ()), "sbo_head": ((M, H), ())}
    # ... and asked for logits they give exactly one row per masked token / span target.
    with torch.no_grad():
        hidden = objective.encode(batch).reshape(-1, H)
        assert objective.mlm_head(hidden[batch["mlm_positions"]]).shape == (N, V)
        sbo = objective.sbo_head(hidden[batch["sbo_left"]], hidden[batch["sbo_right"]], batch["sbo_rel_pos"])
        assert sbo.shape == (M, V)


def test_sbo_ignores_padding():
    """Extra padding (and different ids under it) leaves every loss unchanged: only listed targets count."""
    objective = build("spanbert").eval()
    batch = batch_for("spanbert", seq_len=20)
    B, T, extra = 4, 20, 12

    def reflat(flat):  # b*T+t -> b*(T+extra)+t
        return flat // T * (T + extra) + flat % T

    padded = dict(batch)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        fill = torch.full((B, extra), 99 if key == "input_ids" else 0)
        padded[key] = torch.cat([batch[key], fill], dim=1)
    for key in ("mlm_positions", "sbo_positions", "sbo_left", "sbo_right"):
        padded[key] = reflat(batch[key])
    with torch.no_grad():
        a, b = objective(batch), objective(padded)
    for key in ("mlm_loss", "sbo_loss"):
        assert abs(a[key].item() - b[key].item()) < 1e-5


def test_sbo_loss_is_the_mean_over_targets():
    objective = build("spanbert").eval()
    batch = batch_for("spanbert")
    with torch.no_grad():
        hidden = objective.encode(batch).reshape(-1, 128)
        logits = objective.sbo_head(hidden[batch["sbo_left"]], hidden[batch["sbo_right"]], batch["sbo_rel_pos"])
        expected = torch.nn.functional.cross_entropy(logits, batch["sbo_labels"])
        assert abs(objective(batch)["sbo_loss"].item() - expected.item()) < 1e-5


def test_no_span_targets_gives_zero_sbo_loss_and_finite_gradients():
    objective = build("spanbert")
    batch = batch_for("spanbert")
    for key in ("sbo_positions", "sbo_left", "sbo_right", "sbo_rel_pos", "sbo_labels"):
        batch[key] = batch[key][:0]
    out = objective(batch)
    out["loss"].backward()
    assert out["sbo_loss"].item() == 0.0 and torch.isfinite(out["loss"])
    assert all(torch.isfinite(p.grad).all() for p in objective.parameters() if p.grad is not None)
    # and no masked token at all
    batch["mlm_positions"], batch["mlm_labels"] = batch["mlm_positions"][:0], batch["mlm_labels"][:0]
    assert objective(batch)["loss"].item() == 0.0


def test_vocab_mismatch_is_a_clear_error():
    objective = build("spanbert", vocab_size=64)
    with pytest.raises(UserError, match="holds token id 9[0-9], but the model was built for vocab_size 64; .*"
                                        "pass --model with the shards' vocab_size"):
        objective(batch_for("spanbert"))


@pytest.mark.parametrize("name, change, words", [
    ("spanbert", lambda b: b.pop("sbo_left"), "the batch has no 'sbo_left'; it needs masking 'span'"),
    ("bert", lambda b: b.pop("nsp_labels"), "no 'nsp_labels'; it needs masking 'token' and packing 'pair'"),
    ("roberta", lambda b: b.__setitem__("mlm_labels", b["mlm_labels"].int()), "mlm_labels'\\] must be int64"),
    ("roberta", lambda b: b.__setitem__("mlm_labels", b["mlm_labels"][:-1]), "must have one length"),
    ("roberta", lambda b: b.__setitem__("attention_mask", b["attention_mask"][:, :-1]), "attention_mask.*shape"),
    ("spanbert", lambda b: b.__setitem__("sbo_rel_pos", b["sbo_rel_pos"] + 500),
     "sbo_rel_pos holds 50[0-9], but the SBO head takes 1..15"),
    ("bert", lambda b: b.__setitem__("mlm_positions", b["mlm_positions"] + 10_000), "outside the flat"),
])
def test_malformed_batches_are_user_errors(name, change, words):
    batch = batch_for(name)
    change(batch)
    with pytest.raises(UserError, match=words):
        build(name)(batch)


def test_sequences_longer_than_the_positions_are_a_user_error():
    with pytest.raises(UserError, match="sequences of 24 tokens but the model has 16 positions"):
        build("roberta", max_position_embeddings=16)(batch_for("roberta"))


@pytest.mark.parametrize("name", MLM_OBJECTIVES)
def test_scores_are_the_training_losses_as_sums_with_the_argmax_accuracy(name):
    objective = build(name).eval()  # no dropout: both calls see the same hidden states
    batch = batch_for(name)
    with torch.no_grad():
        losses, scores = objective(batch), objective(batch, scores=True)
    assert set(scores) == {f"{p}_{k}" for p in OBJECTIVES[name].parts for k in ("loss_sum", "correct", "count")}
    for part in OBJECTIVES[name].parts:
        count = scores[f"{part}_count"].item()
        assert count == {"mlm": len(batch["mlm_labels"]), "sbo": len(batch.get("sbo_labels", [])),
                         "nsp": len(batch["input_ids"])}[part]
        assert scores[f"{part}_loss_sum"].item() / count == pytest.approx(losses[f"{part}_loss"].item(), rel=1e-5)
    hidden = objective.encode(batch)
    logits = objective.mlm_head(hidden.reshape(-1, hidden.shape[-1])[batch["mlm_positions"]])
    assert scores["mlm_correct"].item() == (logits.argmax(-1) == batch["mlm_labels"]).sum().item()
