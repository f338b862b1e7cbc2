"""Replaced-token detection through the same training system: `deepspeed train.py --objective electra` (BERT
backbone, shared tables) and `--objective debertav3` (deberta backbone, gradient-disentangled sharing) on two
ranks under ZeRO-2. Both losses fall, TensorBoard gets every RTD number, and a kill -9 resume is bit-exact for
both networks' weights and the optimizer state."""

import glob
import os

import pytest
import torch

from spanbert_ds.errors import UserError
from spanbert_ds.finetune.init import load_init, load_into
from spanbert_ds.finetune.model import TaskModel
from spanbert_ds.run.folder import load_run
from tests.distributed.launch import kill_once_saved, launch, losses
from tests.distributed.test_deberta_runs import deberta_args
from tests.distributed.test_pretrain import check, ds_config

pytestmark = pytest.mark.slow  # launches processes

STEPS = 8
MODELS = {"electra": "tiny", "debertav3": "deberta-tiny"}
LOGGED = {"loss", "mlm_loss", "rtd_loss", "rtd_replaced_accuracy", "rtd_original_accuracy", "replaced_fraction",
          "rtd_prior_loss"}


def rtd_args(shards, out, config, objective, model=None, steps=STEPS):
    return deberta_args(shards, out, config, objective, model or MODELS[objective], steps)


@pytest.fixture(scope="module")
def work(tmp_path_factory, python_docs_shards):
    tmp = tmp_path_factory.mktemp("rtd")
    return tmp, str(python_docs_shards.path), ds_config(tmp, 2)


def optimizer_states(run_dir, tag):
    """Every tensor of the ZeRO optimizer shards of checkpoint `tag`, flattened in file order."""
    tensors = []

    def collect(value):
        if torch.is_tensor(value):
            tensors.append(value)
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                collect(value[key])
        elif isinstance(value, (list, tuple)):
            for item in value:
                collect(item)

    for path in sorted(glob.glob(os.path.join(run_dir, "checkpoints", tag, "*optim_states.pt"))):
        collect(torch.load(path, map_location="cpu", weights_only=False)["optimizer_state_dict"])
    return tensors


@pytest.mark.parametrize("objective", ["electra", "debertav3"])
def test_rtd_trains_on_two_ranks_and_resumes_bit_exact_after_kill_9(work, objective):
    tmp, shards, config = work
    first = str(tmp / objective)
    check(launch(rtd_args(shards, first, config, objective), ranks=2, launcher="deepspeed"))
    rows = losses(first)
    assert sorted(rows) == list(range(1, STEPS + 1))
    assert LOGGED <= set(rows[1]) and LOGGED <= set(rows[STEPS])
    assert rows[STEPS]["mlm_loss"] < rows[1]["mlm_loss"] - 0.5  # the generator learns
    assert rows[STEPS]["rtd_loss"] < rows[1]["rtd_loss"]  # the discriminator too
    assert 0.0 < rows[STEPS]["replaced_fraction"] <= 1.0
    assert os.listdir(os.path.join(first, "tensorboard"))

    killed = str(tmp / f"{objective}_killed")
    args = rtd_args(shards, killed, config, objective)
    kill_once_saved(args, killed, "step2", ranks=2, launcher="deepspeed")
    check(launch(args, ranks=2, launcher="deepspeed"))
    resumed = losses(killed)
    for step in range(1, STEPS + 1):
        assert {k: resumed[step][k] for k in LOGGED} == {k: rows[step][k] for k in LOGGED}
    tag = f"step{STEPS}"
    (model, _), (model_resumed, _) = load_run(first, tag), load_run(killed, tag)
    for (name, weight), (_, weight_resumed) in zip(model.state_dict().items(), model_resumed.state_dict().items()):
        assert torch.equal(weight, weight_resumed), name
    states, states_resumed = optimizer_states(first, tag), optimizer_states(killed, tag)
    assert states and len(states) == len(states_resumed)
    assert all(torch.equal(a, b) for a, b in zip(states, states_resumed))


def test_fine_tuning_starts_from_electras_discriminator(work):
    tmp, shards, config = work
    out = str(tmp / "electra_gdes")
    # 4 steps: the learning rate warms up from 0 over 2
    args = rtd_args(shards, out, config, "electra", model="tiny,embedding_sharing=gdes", steps=4)
    check(launch(args, ranks=1, launcher="python"))
    objective, _ = load_run(out)
    init = load_init(out)
    model = TaskModel(init.config, "sequence", num_labels=3)
    assert load_into(model, init) == ["classifier.bias", "classifier.weight", "pooler.bias", "pooler.weight"]
    word = objective.encoder.embeddings.word  # E_G + E_delta: the table the discriminator was reading
    assert torch.equal(model.encoder.embeddings.word.weight, word.shared_weight + word.delta)
    assert not torch.equal(word.shared_weight, word.weight)  # E_delta moved off zero
    debertav3 = str(tmp / "debertav3")  # the other test's run, when it ran first
    if os.path.isdir(os.path.join(debertav3, "checkpoints")):  # its discriminator (tests/finetune/test_backbones.py)
        init = load_init(debertav3)
        assert load_into(TaskModel(init.config, "span"), init) == ["qa_outputs.bias", "qa_outputs.weight"]
