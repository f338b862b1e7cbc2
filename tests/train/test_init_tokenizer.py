"""--init-from checks that the shards were prepared with the checkpoint's own tokenizer (train/loop.py
check_init_tokenizer): the same number of ids is not enough, the ids must mean the same tokens."""

import os
import shutil

import pytest

from spanbert_ds.data.prepare import prepare
from spanbert_ds.data.shards import Shards
from spanbert_ds.errors import UserError
from spanbert_ds.train.loop import check_init_tokenizer
from tests.conftest import SMALL_TEXT, bert_vocab_path


def test_shards_of_the_checkpoints_own_tokenizer_pass(bert_vocab_shards):
    check_init_tokenizer(os.path.dirname(bert_vocab_path()), Shards(bert_vocab_shards.path))


def test_shards_of_another_tokenizer_with_as_many_ids_are_refused_in_one_line(tmp_path):
    vocab = open(bert_vocab_path(), encoding="utf-8").read().split("\n")
    vocab[2000], vocab[2001] = vocab[2001], vocab[2000]  # same size, two ids swapped
    (tmp_path / "vocab.txt").write_text("\n".join(vocab), encoding="utf-8")
    (tmp_path / "small.txt").write_text(SMALL_TEXT)
    shards = prepare(tmp_path / "small.txt", tmp_path / "shards", tokenizer=str(tmp_path / "vocab.txt"))
    checkpoint = tmp_path / "minilm"
    shutil.copytree(os.path.dirname(bert_vocab_path()), checkpoint)
    with pytest.raises(UserError, match=r"^--init-from .*minilm: its tokenizer is not the one the shards in .* were "
                                        r"prepared with \(30522 and 30522 tokens; e\.g\. .* differs\).*"
                                        r"prepare the corpus with `--tokenizer .*minilm`$"):
        check_init_tokenizer(str(checkpoint), Shards(shards.path))


def test_a_checkpoint_folder_without_tokenizer_files_is_left_to_the_vocabulary_size_check(tmp_path, bert_vocab_shards):
    (tmp_path / "config.json").write_text("{}")
    check_init_tokenizer(str(tmp_path), Shards(bert_vocab_shards.path))
