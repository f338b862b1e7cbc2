"""Replaced-token detection (model/rtd.py, the electra and debertav3 objectives): the generator's shape, the
sampler, the discriminator's targets, the objective's defaults, and which loss's gradient reaches which
parameter under each of the three embedding-sharing modes."""

import pytest
import torch
import torch.nn.functional as F

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


def test_debertav3_has_the_released_head_masking_and_an_emd_generator_and_electra_its_own():
    v3, electra = build("debertav3"), build("electra")
    assert type(v3.rtd_head).__name__ == "ContextRTDHead" and type(electra.rtd_head).__name__ == "RTDHead"
    assert OBJECTIVES["debertav3"].masking_defaults == {"mask_prob": 1.0, "random_prob": 0.0, "keep_prob": 0.0}
    assert OBJECTIVES["electra"].masking_defaults == {"mask_prob": 0.85, "random_prob": 0.0, "keep_prob": 0.15}
    assert v3.generator.encoder.config.emd and not v3.encoder.config.emd
    assert not electra.generator.encoder.config.emd


def test_the_debertav3_generator_predicts_through_the_emd():
    """Its logits move with the absolute position table, which only the EMD reads; the discriminator's states
    do not."""
    model = build("debertav3").eval()
    batch = synthetic_batch(100, masking="token")
    ids, mask, positions = batch["input_ids"], batch["attention_mask"], batch["mlm_positions"]
    with torch.no_grad():
        before = model.generator(ids, mask, None, positions)
        hidden = model.encoder(ids, mask)
        model.generator.encoder.embeddings.position.weight.normal_()
        assert not torch.allclose(model.generator(ids, mask, None, positions), before, atol=1e-4)
        assert torch.equal(model.encoder(ids, mask), hidden)


@pytest.mark.parametrize("sharing", ["gdes", "share"])
def test_debertav3_shares_the_position_table_as_the_word_table(sharing):
    """GDES covers the position table as in the released RTDModel: E_D,pos = sg(E_G,pos) + E_delta,pos; the
    generator's MLM loss moves E_G,pos, and no loss moves E_delta,pos (the discriminator never reads it)."""
    model = build("debertav3", embedding_sharing=sharing)
    position, theirs = model.encoder.embeddings.position, model.generator.encoder.embeddings.position
    assert position is not None
    if sharing == "share":
        assert position is theirs
        return
    assert position.shared_weight is theirs.weight
    with torch.no_grad():
        position.delta.normal_()
    assert torch.equal(position.weight, theirs.weight + position.delta)
    grads = part_gradients(model, synthetic_batch(100, masking="token"))
    mlm, rtd = grads["encoder.embeddings.position.shared_weight"]
    assert moved(mlm) and not moved(rtd)
    assert not any(moved(g) for g in grads["encoder.embeddings.position.delta"])
    assert "generator.encoder.embeddings.position.weight" in aliases(model)


def test_decoupled_training_groups_each_network_and_refuses_one_shared_table():
    model = build("debertav3", rtd_training="decoupled")
    groups = model.parameter_groups(0.01)
    generator = {id(p) for p in model.generator.parameters()}
    assert [g["name"] for g in groups] == ["generator", "generator", "discriminator", "discriminator"]
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0, 0.01, 0.0]
    for group in groups:
        assert all((id(p) in generator) == (group["name"] == "generator") for p in group["params"])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert len(build("debertav3").parameter_groups(0.01)) == 2  # joint: BERT's two groups
    with pytest.raises(UserError, match="embedding_sharing share makes one table both losses pull on"):
        build("debertav3", rtd_training="decoupled", embedding_sharing="share")


def test_decoupled_steps_equal_two_separate_optimisers_on_their_own_losses(monkeypatch):
    """The released DeBERTaV3 trains the generator on its MLM loss and the discriminator on rtd_lambda x RTD
    loss with optimisers of their own. One AdamW over our decoupled groups, stepping on the summed loss, moves
    every parameter as those two do, three steps running (the generator's argmax in place of its samples)."""
    monkeypatch.setattr("spanbert_ds.model.objectives.sample", lambda logits, generator=None: logits.argmax(-1))
    batch = synthetic_batch(100, masking="token")
    changes = {"rtd_training": "decoupled", "rtd_weight": 10.0, "hidden_dropout": 0.0, "attention_dropout": 0.0}
    ours, theirs = build("debertav3", **changes).double(), build("debertav3", **changes).double()
    # Adam divides by sqrt(v): with the default eps the fp32 rounding of a near-zero gradient (the objective's
    # logits are fp32) becomes a full step of either sign; eps 1e-4 keeps such steps as small as their gradients
    adam = {"lr": 1e-2, "eps": 1e-4}
    one = torch.optim.AdamW(ours.parameter_groups(0.01), **adam)
    groups = theirs.parameter_groups(0.01)
    g_opt = torch.optim.AdamW([g for g in groups if g["name"] == "generator"], **adam)
    d_opt = torch.optim.AdamW([g for g in groups if g["name"] == "discriminator"], **adam)
    ids, mask, positions, labels = (batch[k] for k in ("input_ids", "attention_mask", "mlm_positions", "mlm_labels"))
    real = mask.bool()
    for _ in range(3):
        one.zero_grad()
        ours(batch)["loss"].backward()
        one.step()
        # each optimiser's own loss, its gradient taken for its own parameters only
        logits = theirs.generator(ids, mask, None, positions)
        mlm_loss = F.cross_entropy(logits, labels)
        corrupted, replaced = replace_masked(ids, positions, logits.detach().argmax(-1), labels)
        rtd = F.binary_cross_entropy_with_logits(theirs.rtd_head(theirs.encoder(corrupted, mask))[real],
                                                 replaced[real].float())
        for opt, loss in ((g_opt, mlm_loss), (d_opt, 10.0 * rtd)):
            params = [p for g in opt.param_groups for p in g["params"]]
            for p, grad in zip(params, torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)):
                p.grad = grad
        g_opt.step()
        d_opt.step()
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        assert torch.allclose(a, b, atol=1e-7), (name, (a - b).abs().max().item())


def test_an_old_rtd_runs_config_keeps_its_architecture_and_its_resume_is_refused_clearly():
    """model_config.json of an RTD run written before rtd_head: ELECTRA's head and no EMD, as it was trained;
    resuming it under the new defaults names the changes instead of failing on the checkpoint's tensors."""
    from spanbert_ds.model.config import ModelConfig
    from spanbert_ds.train.resume import check_same_run

    old = OBJECTIVES["debertav3"].configure(PRESETS["deberta-tiny"]).to_dict()
    for key in ("rtd_head", "generator_emd", "rtd_training"):
        old.pop(key)
    config = ModelConfig.from_dict(old)
    assert (config.rtd_head, config.generator_emd, config.rtd_training) == ("electra", False, "joint")
    model = OBJECTIVES["debertav3"](config.replace(vocab_size=100, position_buckets=8))
    assert type(model.rtd_head).__name__ == "RTDHead" and not model.generator.encoder.config.emd
    assert not hasattr(model.encoder.embeddings.position, "weight")  # None: no EMD, no table
    new = OBJECTIVES["debertav3"].configure(PRESETS["deberta-tiny"]).to_dict()
    with pytest.raises(UserError, match="model.generator_emd False -> True; model.rtd_head 'electra' -> 'debertav3'"):
        check_same_run("step10", {"identity": {"model": old}}, {"model": new})
    check_same_run("step10", {"identity": {"model": old}}, {"model": config.to_dict()})  # as it was: resumes
