"""`spanbert-ds mask-stats SHARDS`: what the masker really does to a shard folder's samples.

Packs samples as training would, masks N batches, and prints the masked fraction, the spans
(count, dropped, mean length in words against the distribution's exact mean, histogram), the
[MASK]/random/unchanged split (--split: an objective's, e.g. ELECTRA's 85/0/15) and the SBO targets per
sequence. Everything is measured from the masker's
output alone, so the figures check the masker rather than repeat its own bookkeeping.
"""

import numpy as np

from spanbert_ds.data.masking import MASKERS, SPLITS, MaskingConfig, word_unit_starts
from spanbert_ds.errors import UserError


def add_arguments(parser):
    parser.add_argument("shards", help="a shard folder made by `spanbert-ds prepare`, or a blend as train.py's "
                                       "--data takes it: \"0.7 wiki/ 0.3 books/\" (samples drawn by weight)")
    parser.add_argument("--masker", choices=sorted(MASKERS), default="span",
                        help="span (spanbert), token (bert, roberta) or wholeword (default: span)")
    parser.add_argument("--packing", choices=("full", "doc", "pair"), default="doc",
                        help="how samples are cut, as train.py's --packing: doc (spanbert), full (roberta) or pair "
                             "(bert) (default: doc)")
    parser.add_argument("--max-seq-len", type=int, default=512, help="tokens per sample (default: 512)")
    parser.add_argument("--batch-size", type=int, default=32, help="samples per batch (default: 32)")
    parser.add_argument("--batches", type=int, default=20, help="number of batches to mask (default: 20)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of sample choice and masking; train.py's --seed gives its masks (default: 0)")
    parser.add_argument("--epoch", type=int, default=0, help="epoch the masks are drawn for (default: 0)")
    parser.add_argument("--split", choices=sorted(SPLITS), default="bert",
                        help="the [MASK]/random/unchanged split of a chosen token that an objective starts from, "
                             "before --masking: bert (80/10/10; spanbert, bert, roberta, deberta), electra "
                             "(85/0/15), debertav3 (100/0/0) (default: bert)")
    parser.add_argument("--masking", default="",
                        help="masking parameters as train.py takes them, key=value,... e.g. "
                             "mask_ratio=0.15,geometric_p=0.2,max_span_words=10 (default: the paper's)")


def spans_in(out, T):
    """(start, end) inclusive flat positions of each run of consecutive masked tokens in a row."""
    pos = out["mlm_positions"]
    if pos.size == 0:
        return pos, pos
    breaks = np.flatnonzero((np.diff(pos) != 1) | (np.diff(pos // T) != 0)) + 1
    return pos[np.r_[0, breaks]], pos[np.r_[breaks, pos.size] - 1]


def collect(masker, packed, n_batches, batch_size, epoch, seed):
    """Mask n_batches batches of distinct samples and count what happened."""
    n = min(n_batches * batch_size, len(packed))
    if n == 0:
        raise UserError("the shard folder yields no samples; check it with `spanbert-ds prepare`")
    order = np.random.default_rng(seed).permutation(len(packed))[:n]
    T = packed.max_seq_len
    c = {"sequences": 0, "maskable": 0, "masked": 0, "spans": 0, "drawn": 0, "dropped": 0, "sbo": 0,
         "action_tokens": np.zeros(3), "action_spans": np.zeros(3), "words": []}
    for start in range(0, n, batch_size):
        idx = np.sort(order[start:start + batch_size])
        batch = packed.batch(idx)
        out = masker(batch, idx, epoch, seed)
        maskable = batch["attention_mask"].astype(bool) & ~batch["special_mask"]
        before = batch["input_ids"].reshape(-1)[out["mlm_positions"]]
        after = out["input_ids"].reshape(-1)[out["mlm_positions"]]
        action = np.where(after == masker.mask_id, 0, np.where(after != before, 1, 2))
        c["sequences"] += len(idx)
        c["maskable"] += int(maskable.sum())
        c["masked"] += out["mlm_positions"].size
        c["action_tokens"] += np.bincount(action, minlength=3)
        c["sbo"] += out["sbo_positions"].size
        s, e = spans_in(out, T)
        c["spans"] += s.size
        # A span's action: [MASK] if its tokens are, else random if any token changed.
        span_of = np.repeat(np.arange(s.size), e - s + 1)
        changed = np.bincount(span_of, weights=action == 1, minlength=s.size) > 0
        first = np.searchsorted(out["mlm_positions"], s)
        c["action_spans"] += np.bincount(np.where(action[first] == 0, 0, np.where(changed, 1, 2)), minlength=3)
        words = np.r_[0, np.cumsum(word_unit_starts(batch).reshape(-1))]
        c["words"].append(words[e + 1] - words[s])
        stats = getattr(masker, "last_stats", {})
        c["drawn"] += stats.get("spans_drawn", 0)
        c["dropped"] += stats.get("spans_dropped", 0)
    c["words"] = np.concatenate(c["words"])
    return c


def report(c, masker, packed, args):
    cfg = masker.config
    lines = [
        f"mask-stats: {args.shards}: {args.masker} masking, packing {packed.mode}, T={packed.max_seq_len}, "
        f"{c['sequences']} sequences (epoch {args.epoch}, seed {args.seed})",
        f"  masked fraction          {100 * c['masked'] / max(c['maskable'], 1):6.2f}%   "
        f"(target {100 * cfg.mask_ratio:.2f}% of {c['maskable']} non-special tokens)",
    ]
    tok = c["action_tokens"] / max(c["action_tokens"].sum(), 1)
    lines.append(f"  80/10/10 per token       [MASK] {100 * tok[0]:.1f}% / random {100 * tok[1]:.1f}% / "
                 f"unchanged {100 * tok[2]:.1f}%   (target {100 * cfg.mask_prob:.0f}/{100 * cfg.random_prob:.0f}/"
                 f"{100 * cfg.keep_prob:.0f})")
    if args.masker == "span":
        spn = c["action_spans"] / max(c["action_spans"].sum(), 1)
        probs = cfg.span_length_probs()
        hist = np.bincount(c["words"], minlength=cfg.max_span_words + 1)[cfg.min_span_words:] / max(c["spans"], 1)
        lines += [
            f"  80/10/10 per span        [MASK] {100 * spn[0]:.1f}% / random {100 * spn[1]:.1f}% / "
            f"unchanged {100 * spn[2]:.1f}%",
            f"  spans                    {c['spans']} ({c['spans'] / c['sequences']:.1f} per sequence); "
            f"dropped for lack of room {c['dropped']} of {c['drawn']} drawn "
            f"({100 * c['dropped'] / max(c['drawn'], 1):.3f}%)",
            f"  span length in words     mean {c['words'].mean() if c['spans'] else float('nan'):.3f}, "
            f"exact {cfg.mean_span_words:.3f} (Geometric(p={cfg.geometric_p:g}) on "
            f"{cfg.min_span_words}..{cfg.max_span_words})",
            "  length    " + " ".join(f"{k:>5d}" for k in range(cfg.min_span_words, cfg.max_span_words + 1)),
            "  seen %    " + " ".join(f"{100 * h:5.1f}" for h in hist),
            "  exact %   " + " ".join(f"{100 * q:5.1f}" for q in probs),
            f"  SBO targets per sequence {c['sbo'] / c['sequences']:.1f} (at most {cfg.max_span_targets} per span)",
        ]
    print("\n".join(lines))


def run(args):
    from spanbert_ds.data.blend import BlendedSamples, check_one_tokenizer, corpus_names, parse_data
    from spanbert_ds.data.packing import PackedSamples
    from spanbert_ds.data.shards import Shards

    for name in ("batch_size", "batches"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)} must be at least 1")
    config = MaskingConfig.from_spec(args.masking, SPLITS[args.split])
    blend = parse_data(args.shards, flag="SHARDS")
    corpora = [Shards(folder) for _, folder in blend]
    check_one_tokenizer(corpora)
    masker = MASKERS[args.masker].from_meta(config, corpora[0].meta)
    parts = [PackedSamples(shards, args.packing, args.max_seq_len, seed=args.seed) for shards in corpora]
    packed = parts[0] if len(parts) == 1 else BlendedSamples(
        parts, [w for w, _ in blend], corpus_names([folder for _, folder in blend]), args.seed)
    counts = collect(masker, packed, args.batches, args.batch_size, args.epoch, args.seed)
    report(counts, masker, packed, args)
