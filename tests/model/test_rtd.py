"""Replaced-token detection (model/rtd.py, the electra and debertav3 objectives): the generator's shape, the
sampler, the discriminator's targets, the objective's defaults, and which loss's gradient reaches which
parameter under each of the three embedding-sharing modes."""

import pytest
import torch

from spanbert_ds.errors import UserError
from spanbert_ds.model.config import PRESETS
from spanbert_ds.model.objectives import OBJECTIVES, aliases
from spanbert_ds.model.rtd import generator_config, merged_state_dict, replace_masked, sample
from tests.model.synthetic import synthetic_batch, tiny_config

CONFIGS = {"electra": lambda **kw: tiny_config(**kw),
           "debertav3": lambda **kw: tiny_config(position_buckets=8, **kw)}


def build(objective, **changes):
    torch.manual_seed(0)
    return OBJECTIVES[objective](CONFIGS[objective](**changes))


def test_the_generator_has_the_papers_shapes():
    electra_base = OBJECTIVES["electra"].configure(PRESETS["bert-base"].replace(generator_width=1 / 3))
    small = generator_config(electra_base)  # ELECTRA-Base's generator: 256 wide, 4 heads, FFN 1024, 12 layers
    assert (small.hidden_size, small.num_heads, small.intermediate_size, small.num_layers) == (256, 4, 1024, 12)
    v3 = generator_config(OBJECTIVES["debertav3"].configure(PRESETS["deberta-v3-base"]))
    assert (v3.hidden_size, v3.num_heads, v3.num_layers) == (768, 12, 6)  # DeBERTaV3: full width, half the depth


def test_objective_defaults_fill_only_what_the_model_spec_left_unset():
    electra = OBJECTIVES["electra"].configure(PRESETS["tiny"])
    assert (electra.embedding_sharing, electra.generator_width, electra.generator_depth) == ("share", 0.25, 1.0)
    v3 = OBJECTIVES["debertav3"].configure(PRESETS["tiny"])
    assert (v3.backbone, v3.embedding_sharing, v3.generator_width, v3.generator_depth) == ("deberta", "gdes", 1.0, 0.5)
    chosen = OBJECTIVES["debertav3"].configure(PRESETS["tiny"].replace(embedding_sharing="share", generator_depth=1.0))
    assert (chosen.embedding_sharing, chosen.generator_depth) == ("share", 1.0)


@pytest.mark.parametrize("changes, message", [({"embedding_sharing": "tied"}, "embedding_sharing 'tied' is unknown"),
                                              ({"generator_width": 1.5}, "generator_width must be a fraction")])
def test_bad_rtd_settings_are_one_clear_error(changes, message):
    with pytest.raises(UserError, match=message):
        build("electra", **changes)


def test_sampling_follows_the_generators_softmax():
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).expand(40000, 4)
    counts = torch.bincount(sample(logits), minlength=4).float() / 40000
    assert torch.allclose(counts, logits[0].softmax(0), atol=0.01)


def test_a_sample_equal_to_the_original_counts_as_original():
    ids = torch.tensor([[2, 4, 7, 4, 3], [2, 9, 4, 3, 0]])
    positions, labels, sampled = torch.tensor([1, 3, 7]), torch.tensor([8, 6, 5]), torch.tensor([8, 11, 12])
    corrupted, replaced = replace_masked(ids, positions, sampled, labels)
    assert corrupted.tolist() == [[2, 8, 7, 11, 3], [2, 9, 12, 3, 0]]
    assert replaced.tolist() == [[False, False, False, True, False], [False, False, True, False, False]]


def test_summarize_turns_step_sums_into_exact_accuracies():
    parts = {"loss": 3.0, "rtd_replaced_correct": 3.0, "rtd_replaced": 4.0, "rtd_original_correct": 45.0,
             "rtd_original": 50.0, "rtd_masked": 8.0}
    summary = OBJECTIVES["electra"].summarize(parts)
    prior = summary.pop("rtd_prior_loss")  # the binary entropy at 4 replaced of 54 tokens
    assert summary == {"loss": 3.0, "rtd_replaced_accuracy": 0.75, "rtd_original_accuracy": 0.9,
                       "replaced_fraction": 0.5}
    assert prior == pytest.approx(torch.nn.functional.binary_cross_entropy(torch.tensor(4 / 54).expand(54),
                                                                           (torch.arange(54) < 4).float()).item())


def part_gradients(objective, batch):
    """{name: (gradient of the generator's MLM loss, gradient of the discriminator's loss)} from the total loss at
    lambda 0, 1 and 2 on the same samples: the MLM part is lambda 0's, the RTD part the difference."""
    grads = []
    for weight in (0.0, 1.0, 2.0):
        objective.config.rtd_weight = weight
        objective.zero_grad()
        torch.manual_seed(1)  # the same generator samples each time
        objective(batch)["loss"].backward()
        grads.append({n: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                      for n, p in objective.named_parameters()})
    return {n: (grads[0][n], grads[2][n] - grads[1][n]) for n in grads[0]}


def moved(grad):
    return bool(grad.abs().max() > 1e-7)


@pytest.mark.parametrize("objective", ["electra", "debertav3"])
@pytest.mark.parametrize("sharing", ["none", "share", "gdes"])
def test_each_loss_reaches_only_its_own_parameters(objective, sharing):
    model = build(objective, embedding_sharing=sharing)
    grads = part_gradients(model, synthetic_batch(100, masking="token"))
    mlm = {n for n, (g, _) in grads.items() if moved(g)}
    rtd = {n for n, (_, g) in grads.items() if moved(g)}
    word = "encoder.embeddings.word"
    # No gradient from the discriminator crosses the sampling into the generator's own layers or head.
    assert not {n for n in rtd if n.startswith("generator.")}
    # The generator's loss never reaches the discriminator's layers or head.
    assert not {n for n in mlm if n.startswith(("encoder.layers", "rtd_head"))}
    assert {n for n in rtd if n.startswith("encoder.layers")} and {n for n in mlm if n.startswith("generator.encoder")}
    if sharing == "none":
        assert f"{word}.weight" in rtd and f"{word}.weight" not in mlm
        assert "generator.encoder.embeddings.word.weight" in mlm
    elif sharing == "share":  # one table, pulled by both losses
        assert f"{word}.weight" in mlm and f"{word}.weight" in rtd
    else:  # gdes: E_G (the generator's table, under the discriminator's first name) only from the MLM loss,
        # E_delta only from the discriminator's
        assert f"{word}.shared_weight" in mlm and f"{word}.shared_weight" not in rtd
        assert f"{word}.delta" in rtd and f"{word}.delta" not in mlm
        assert not moved(model.encoder.embeddings.word.delta)  # zero at the start


def test_gdes_discriminator_sees_the_generators_table_plus_its_delta():
    model = build("debertav3")
    word = model.encoder.embeddings.word
    assert word.shared_weight is model.generator.encoder.embeddings.word.weight  # E_G, one tensor
    with torch.no_grad():
        word.delta.normal_()
    assert torch.equal(word.weight, word.shared_weight + word.delta)
    ids = torch.tensor([[2, 7, 3]])
    assert torch.equal(word(ids), (word.shared_weight + word.delta)[ids])


def test_shared_tables_are_one_tensor_saved_once():
    model = build("electra", embedding_sharing="share")
    assert model.generator.encoder.embeddings.word is model.encoder.embeddings.word
    second = aliases(model)
    assert "generator.encoder.embeddings.inner.word.weight" in second
    assert "generator.mlm_head.decoder_weight" in second and "encoder.embeddings.word.weight" not in second


def test_the_loss_is_mlm_plus_lambda_times_rtd(monkeypatch):
    # the generator's argmax in place of its samples, so that training and scoring see the same replacements
    monkeypatch.setattr("spanbert_ds.model.objectives.sample", lambda logits, generator=None: logits.argmax(-1))
    model = build("electra")
    batch = synthetic_batch(100, masking="token")
    out = model(batch)
    assert out["loss"].item() == pytest.approx(out["mlm_loss"].item() + 50.0 * out["rtd_loss"].item(), rel=1e-6)
    model.eval()
    scores = model(batch, scores=True)
    assert scores["rtd_count"] == batch["attention_mask"].sum()
    assert scores["rtd_loss_sum"].item() / scores["rtd_count"].item() == pytest.approx(out["rtd_loss"].item(), rel=1e-5)


@pytest.mark.parametrize("objective", ["electra", "debertav3"])
@pytest.mark.slow
def test_both_losses_fall_when_overfitting_one_batch(objective):
    model = build(objective)
    batch = synthetic_batch(100, masking="token")
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    first = last = None
    for step in range(30):
        torch.manual_seed(step)
        out = model(batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        first = first or {k: out[k].item() for k in ("mlm_loss", "rtd_loss")}
        last = {k: out[k].item() for k in ("mlm_loss", "rtd_loss")}
    assert last["mlm_loss"] < 0.5 * first["mlm_loss"] and last["rtd_loss"] < first["rtd_loss"], (first, last)


def test_held_out_scores_draw_the_same_samples_every_time_and_leave_trainings_stream_alone():
    model = build("electra").eval()
    batch = synthetic_batch(100, masking="token")
    torch.manual_seed(5)
    with torch.no_grad():
        first = model(batch, scores=True)
        state = torch.get_rng_state()
        second = model(batch, scores=True)
    assert torch.equal(torch.get_rng_state(), state)
    assert {k: v.item() for k, v in first.items()} == {k: v.item() for k, v in second.items()}


def test_merged_state_dict_writes_the_table_the_discriminator_reads():
    model = build("electra", embedding_sharing="gdes")
    with torch.no_grad():
        model.encoder.embeddings.word.delta.normal_()
    state = merged_state_dict(model)
    word = model.encoder.embeddings.word
    assert "encoder.embeddings.word.delta" not in state and "encoder.embeddings.word.shared_weight" not in state
    assert torch.equal(state["encoder.embeddings.word.weight"], word.shared_weight + word.delta)
    plain = OBJECTIVES["electra"](CONFIGS["electra"](embedding_sharing="none"))
    missing, _ = plain.encoder.load_state_dict({k[len("encoder."):]: v for k, v in state.items()
                                                if k.startswith("encoder.")}, strict=False)
    assert missing == []
