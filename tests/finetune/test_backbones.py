"""Fine-tuning every backbone (issue 24 item 4): a run of each pretraining objective starts a TaskModel
(finetune/init.py, finetune/model.py), whose export (interop/task_hf.py) is its backbone's transformers class,
which transformers opens with no missing or unused weight and which gives our logits.

    bert, spanbert -> Bert*   roberta -> Roberta*   electra (discriminator) -> Electra*
    deberta (EMD dropped), debertav3 (discriminator, E_G + E_delta merged) -> DebertaV2*
"""

import json

import pytest
import torch

from spanbert_ds.finetune.classify import ClassifyTask
from spanbert_ds.finetune.init import load_init, load_into
from spanbert_ds.finetune.model import TaskModel
from spanbert_ds.finetune.ner import NerTask
from spanbert_ds.finetune.squad import SquadTask
from spanbert_ds.interop import hf  # what cli.py hands down to read a Hugging Face --init
from spanbert_ds.interop.task_hf import export_task_hf
from spanbert_ds.model.objectives import OBJECTIVES
from tests.interop.test_export import zero0_run
from tests.interop.test_hf import wordpiece
from tests.model.synthetic import tiny_config

transformers = pytest.importorskip("transformers")

PREFIXES = {"bert": "Bert", "spanbert": "Bert", "roberta": "Roberta", "electra": "Electra", "deberta": "DebertaV2",
            "debertav3": "DebertaV2"}
TASKS = {"span": SquadTask, "sequence": ClassifyTask, "token": NerTask}  # their hf_architecture: BERT's names
HEAD_NAMES = {"span": ["qa_outputs.bias", "qa_outputs.weight"],
              "sequence": ["classifier.bias", "classifier.weight", "pooler.bias", "pooler.weight"],
              "token": ["classifier.bias", "classifier.weight"]}
AUTO = {"span": "AutoModelForQuestionAnswering", "sequence": "AutoModelForSequenceClassification",
        "token": "AutoModelForTokenClassification"}
LABELS = {"span": None, "sequence": ["neg", "neu", "pos"], "token": ["B-PER", "I-PER", "O", "B-LOC"]}


@pytest.fixture(scope="module")
def tokenizer():
    return wordpiece(lowercase=True)


def off_init(module, scale=0.05):
    """Every tensor moved off its initialisation: zeros and ones (a GDES delta, biases, LayerNorms) would hide a
    tensor exported in the wrong place, or not at all."""
    with torch.no_grad():
        for tensor in module.parameters():
            tensor.add_(torch.randn_like(tensor) * scale)
    return module


def objective_of(name, vocab_size, **changes):
    torch.manual_seed(0)
    return off_init(OBJECTIVES[name](tiny_config(vocab_size=vocab_size, attention_backend="eager", **changes)))


def run_folder(tmp_path, objective, tokenizer):
    """A pretraining run folder whose one complete checkpoint (ZeRO-0, fp32) holds `objective`."""
    return zero0_run(tmp_path, objective, None, tokenizer, dtype=torch.float32)


def inputs(config, vocab_size, pad_token_id):
    """Two rows, the second padded (with the pad id, which RoBERTa's position ids count from), two segments
    where the model has them."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab_size, (2, 10), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    ids[1, 7:] = pad_token_id
    batch = {"input_ids": ids, "attention_mask": mask}
    if config.type_vocab_size:
        types = torch.zeros_like(ids)
        types[:, 4:7] = 1
        batch["token_type_ids"] = types
    return batch


def hf_logits(model, head, batch):
    with torch.no_grad():
        out = model(**batch)
    return torch.stack([out.start_logits, out.end_logits], -1) if head == "span" else out.logits


@pytest.mark.parametrize("head", ["span", "sequence", "token"])
@pytest.mark.parametrize("objective_name, backbone", [(name, None) for name in PREFIXES] + [("spanbert", "deberta")])
def test_a_run_of_every_objective_fine_tunes_and_exports_as_its_backbones_class(tmp_path, tokenizer,
                                                                                 objective_name, backbone, head):
    """(spanbert on the deberta backbone: DebertaV2 with segments)"""
    V = tokenizer.get_vocab_size()
    changes = {"backbone": backbone} if backbone else {}
    init = load_init(run_folder(tmp_path, objective_of(objective_name, V, **changes), tokenizer), hf)
    labels = LABELS[head]
    model = TaskModel(init.config, head, len(labels) if labels else 2)
    new = [name for name in HEAD_NAMES[head] if not (objective_name == "bert" and name.startswith("pooler."))]
    assert load_into(model, init) == new  # every encoder tensor came from the run (and BERT's NSP pooler)
    off_init(model).eval()

    export_task_hf(model.state_dict(), init.config, TASKS[head].hf_architecture, labels, init.tokenizer_path,
                   tmp_path / "hf")
    expected = f"{'DebertaV2' if backbone else PREFIXES[objective_name]}For{TASKS[head].hf_architecture.partition('For')[2]}"
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == [expected]
    theirs, info = getattr(transformers, AUTO[head]).from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert type(theirs).__name__ == expected
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    batch = inputs(init.config, V, init.config.pad_token_id)
    with torch.no_grad():
        ours = model(batch)["logits"]
    reference = hf_logits(theirs.eval(), head, batch)
    if head != "sequence":  # what sits at the padding means nothing
        real = batch["attention_mask"].bool()
        ours, reference = ours[real], reference[real]
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_debertav3_fine_tunes_its_discriminator_with_the_merged_tables_and_deberta_drops_the_emd(tmp_path,
                                                                                                   tokenizer):
    V = tokenizer.get_vocab_size()
    objective = objective_of("debertav3", V)
    init = load_init(run_folder(tmp_path / "v3", objective, tokenizer), hf)
    model = TaskModel(init.config, "span")
    load_into(model, init)
    word = objective.encoder.embeddings.word  # E_D = sg(E_G) + E_delta, the table the discriminator read
    assert torch.equal(model.encoder.embeddings.word.weight, word.shared_weight + word.delta)
    assert not torch.equal(word.shared_weight, word.weight)

    deberta = objective_of("deberta", V)
    init = load_init(run_folder(tmp_path / "v2", deberta, tokenizer), hf)
    assert init.config.emd and "encoder.embeddings.position.weight" in init.state
    model = TaskModel(init.config, "sequence", 3)
    load_into(model, init)
    assert "encoder.embeddings.position.weight" not in model.state_dict()  # no EMD, no absolute positions
    batch = inputs(init.config, V, 0)
    with torch.no_grad():  # all layers once: the pretraining encoder without its EMD
        plain = type(deberta.encoder)(init.config.replace(emd=False))
        plain.load_state_dict({k: v for k, v in deberta.encoder.state_dict().items() if "position" not in k})
        torch.testing.assert_close(model.eval().encoder(batch["input_ids"], batch["attention_mask"]),
                                   plain.eval()(batch["input_ids"], batch["attention_mask"]))


def test_only_berts_classification_head_starts_from_the_pretrained_pooler(tmp_path, tokenizer):
    V = tokenizer.get_vocab_size()
    for name, loaded in (("bert", True), ("roberta", False)):
        init = load_init(run_folder(tmp_path / name, objective_of(name, V), tokenizer), hf)
        init.state.update({"pooler.weight": torch.ones(128, 128), "pooler.bias": torch.ones(128)})
        model = TaskModel(init.config, "sequence", 3)
        assert ("pooler.weight" in load_into(model, init)) is not loaded  # RobertaClassificationHead's is new
        assert torch.equal(model.pooler.bias, torch.ones(128)) is loaded


def test_a_hugging_face_deberta_folder_starts_fine_tuning(tmp_path, tokenizer):
    from spanbert_ds.interop.hf import export_hf

    V = tokenizer.get_vocab_size()
    objective = objective_of("deberta", V)
    export_hf(objective, objective.config, tokenizer, tmp_path / "mlm")  # DebertaV2ForMaskedLM + emd.safetensors
    init = load_init(str(tmp_path / "mlm"), hf)
    assert init.config.backbone == "deberta"
    model = TaskModel(init.config, "token", 4)
    assert load_into(model, init) == HEAD_NAMES["token"]
    for name, tensor in model.encoder.state_dict().items():
        rows = V if name == "embeddings.word.weight" else None  # the padding rows past the vocabulary stay zero
        assert torch.equal(tensor[:rows], objective.encoder.state_dict()[name][:rows]), name


def squad_file(path, contexts):
    """A SQuAD v1.1 file: for each context, one question whose answer is its second and third words."""
    paragraphs = []
    for i, context in enumerate(contexts):
        answer = " ".join(context.split()[1:3])
        paragraphs.append({"context": context, "qas": [{"id": f"q{i}", "question": "which words come second?",
                                                         "answers": [{"text": answer,
                                                                      "answer_start": context.index(answer)}]}]})
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}))
    return path


def test_a_debertav3_run_fine_tunes_on_squad_and_exports_deberta_v2_for_question_answering(tmp_path, tokenizer):
    """The issue's "done when", in one process (the launched run: test_backbones_run.py)."""
    from spanbert_ds.data.tokenizer import load_tokenizer

    V = tokenizer.get_vocab_size()
    init = load_init(run_folder(tmp_path, objective_of("debertav3", V), tokenizer), hf)
    task = SquadTask(load_tokenizer(init.tokenizer_path), 32, doc_stride=8, max_query_len=12)
    words = "hello world this is spanbert the quick brown fox jumps over lazy dog cased words matter here".split()
    contexts = [" ".join(words[i:] + words[:i]) for i in range(8)]
    examples = task.read(str(squad_file(tmp_path / "train.json", contexts)))
    features = task.features(examples, train=True)
    keys = ("input_ids", "attention_mask", "start_positions", "end_positions")
    batch = {k: torch.as_tensor(features[k], dtype=torch.long) for k in keys}
    torch.manual_seed(0)
    model = TaskModel(init.config, task.head)
    load_into(model, init)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        loss = model.train()(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses

    export_task_hf(model.state_dict(), init.config, task.hf_architecture, None, init.tokenizer_path, tmp_path / "hf")
    theirs = transformers.AutoModelForQuestionAnswering.from_pretrained(tmp_path / "hf").eval()
    assert type(theirs).__name__ == "DebertaV2ForQuestionAnswering"
    eval_batch = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        ours = model.eval()(eval_batch)["logits"]
    real = eval_batch["attention_mask"].bool()
    torch.testing.assert_close(ours[real], hf_logits(theirs, "span", eval_batch)[real], atol=1e-5, rtol=1e-5)
