"""The fine-tuning tasks: one class per task, one registry.

A task reads its files, turns examples into fixed-length feature arrays (numpy, one row per model
input), and scores the model's logits with the task's official metric. Its class attributes say
which head the model gets (`head`: finetune/model.py), which feature arrays are the targets
(`target_keys`), which Hugging Face class the export is (`hf_architecture`), and where predictions
go (`predictions_file`). Each is built as `TASKS[name](tokenizer, max_seq_len, **options)`.
"""

from spanbert_ds.finetune.classify import ClassifyTask
from spanbert_ds.finetune.ner import NerTask
from spanbert_ds.finetune.squad import SquadTask

TASKS = {
    "squad": SquadTask,
    "classify": ClassifyTask,
    "ner": NerTask,
}
DEFAULT_MAX_SEQ_LEN = {"squad": 384, "classify": 128, "ner": 128}
