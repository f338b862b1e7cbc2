"""Train or load a `tokenizers` tokenizer, and say what the shard folder records of it (tokenizer_meta).

Three kinds, named after what the model code needs to know:
- "wordpiece" (BERT / SpanBERT): [PAD]=0, [UNK], [CLS], [SEP], [MASK]; a token continues a word
  when it starts with `##`.
- "bpe" (RoBERTa, byte-level): <s>=0, <pad>, </s>, <unk>, <mask>; a token begins a word when it
  starts with the leading-space marker `Ġ` (or SentencePiece's `▁`). The first token of a line has
  no marker, so the shard writer marks it as a word start itself.
- "unigram" (SentencePiece Unigram, DeBERTa-v3's spm.model): [PAD]=0, [CLS]=1, [SEP]=2, [UNK]=3 are
  the model's control pieces, [MASK] comes after the last piece (128000 in V3, whose model has 128100
  rows); a token begins a word when it starts with `▁`. Loaded from the spm.model itself (or a
  tokenizer.json with a Unigram model), never trained here.

Training: byte-level BPE training is deterministic; WordPiece training in tokenizers 0.23 is not
(huggingface/tokenizers#1794: `##` pieces get ids in hash-map order, which breaks merge ties
differently from run to run, so the vocabulary can differ by a few tokens). The shard folder keeps
the tokenizer and its sha256; to reproduce a run, reuse OUT/tokenizer.json with `--tokenizer`.

An spm.model becomes a `tokenizers` Tokenizer that encodes as SentencePiece itself does, which is what
DeBERTa-v3 was trained with: its normalisation table (nmt_nfkc), the dummy prefix, extra spaces removed.
(transformers 5's DebertaV2Tokenizer leaves the table out: the ids differ where it changes the text, an
ellipsis or full-width letters; and a run of one repeated character that two segmentations of equal score
cover may be split in the other order.) Reading it needs the `sentencepiece` package (its model_pb2, on
protobuf); the shard folder keeps the converted tokenizer.json, so nothing downstream needs it again.

Loaded tokenizers always have truncation and padding switched off: a tokenizer.json saved for
inference (MiniLM's truncates at 128) would otherwise cut every sentence silently.
"""

import json
import re
import threading
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from spanbert_ds.errors import UserError

WORDPIECE_SPECIALS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
BPE_SPECIALS = {"cls": "<s>", "pad": "<pad>", "sep": "</s>", "unk": "<unk>", "mask": "<mask>"}
UNIGRAM_SPECIALS = {"pad": "[PAD]", "cls": "[CLS]", "sep": "[SEP]", "unk": "[UNK]", "mask": "[MASK]"}
SPECIALS = {"wordpiece": WORDPIECE_SPECIALS, "bpe": BPE_SPECIALS, "unigram": UNIGRAM_SPECIALS}
# What load_tokenizer looks for in a folder, in this order (spm.model: DeBERTa-v3's SentencePiece model)
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "spm.model")


def train_tokenizer(kind, sentences, vocab_size, lowercase=False, min_frequency=2):
    """Train a tokenizer of `kind` ("wordpiece" | "bpe") on an iterator of sentence strings (streamed)."""
    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=lowercase, lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        specials = list(WORDPIECE_SPECIALS.values())
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                            special_tokens=specials, show_progress=False)
    elif kind == "bpe":
        tok = Tokenizer(models.BPE())
        if lowercase:
            tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        specials = list(BPE_SPECIALS.values())
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}")
    _interruptible(tok.train_from_iterator, _bounded_words(sentences, drop=kind == "wordpiece"), trainer=trainer)
    _add_post_processor(tok, kind)
    return tok


MAX_WORD_CHARS = 100  # WordPiece's max_input_chars_per_word: a longer word is encoded as [UNK]


def _bounded_words(sentences, drop, limit=MAX_WORD_CHARS):
    """The sentences with every run of more than `limit` non-space characters dropped (WordPiece, which
    encodes it as [UNK] anyway) or cut into pieces of `limit` (byte-level BPE, which encodes every byte):
    the trainers' time grows with the square of a word's length, so one 1 MB line without spaces (a
    base64 blob, minified code) kept a training busy for minutes."""
    long_word = re.compile(r"\S{%d,}" % (limit + 1))
    cut = (lambda m: "") if drop else (lambda m: " ".join(m[0][i:i + limit] for i in range(0, len(m[0]), limit)))
    for sentence in sentences:
        yield long_word.sub(cut, sentence) if len(sentence) > limit else sentence


def _interruptible(fn, *args, **kwargs):
    """fn in a worker thread while this one waits: the Rust trainer holds no Python signal handling, so
    Ctrl-C (or SIGTERM turned into KeyboardInterrupt) would wait for it; here it acts at once."""
    result, error = [], []

    def work():
        try:
            result.append(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            error.append(e)

    worker = threading.Thread(target=work, daemon=True)  # a daemon: an interrupted process need not wait for it
    worker.start()
    while worker.is_alive():
        worker.join(0.1)
    if error:
        raise error[0]
    return result[0]


MIN_TRAINED_VOCAB = 64  # the smallest --vocab-size prepare trains


def check_vocab_size(tok, vocab_size):
    """Training stops early when the corpus has no more pairs to merge: say so instead of going on."""
    reached = tok.get_vocab_size(with_added_tokens=True)
    if reached < vocab_size:
        smaller = f"pass --vocab-size {reached} or less, " if reached >= MIN_TRAINED_VOCAB else ""
        raise UserError(f"the corpus supports a vocabulary of only {reached} tokens but --vocab-size is "
                        f"{vocab_size}; {smaller}use a larger corpus, or pass --allow-smaller-vocab to accept "
                        f"{reached}")


def load_tokenizer(path):
    """Load a tokenizer.json, a BERT vocab.txt, a SentencePiece Unigram spm.model, or a folder holding one."""
    path = Path(path)
    if path.is_dir():
        for name in TOKENIZER_FILES:
            if (path / name).is_file():
                return load_tokenizer(path / name)
        raise UserError(f"--tokenizer folder {path} has no tokenizer.json, vocab.txt or spm.model; "
                        f"point --tokenizer at one of them, or use `wordpiece`/`bpe` to train one")
    if not path.is_file():
        raise UserError(f"--tokenizer {path} does not exist; pass a tokenizer.json, a vocab.txt, an spm.model, "
                        f"or `wordpiece`/`bpe` to train one")
    if path.suffix == ".txt":
        tok = _load_vocab_txt(path)
    elif _is_sentencepiece(path):
        tok = _load_sentencepiece(path)
    else:
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises its own exception types for bad JSON
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(f"--tokenizer {path} is not a valid tokenizers tokenizer.json ({reason}); pass a file "
                            f"saved by tokenizers' Tokenizer.save, a BERT vocab.txt, or `wordpiece`/`bpe`") from None
    tok.no_truncation()
    tok.no_padding()
    tokenizer_meta(tok, source=path)  # validates kind and special tokens now, with the file name in the message
    return tok


def _load_vocab_txt(path):
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"--tokenizer {path} is not a UTF-8 vocab.txt (one token per line)") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    # Ids are line numbers, as in Hugging Face's loaders (a duplicate keeps its last line's id, an empty
    # line holds its id unused), so that they index an HF checkpoint's embedding rows.
    vocab = {token.rstrip("\r"): i for i, token in enumerate(lines) if token.rstrip("\r")}
    if "[UNK]" not in vocab:
        raise UserError(f"--tokenizer {path} does not look like a BERT vocab.txt (no [UNK] line); "
                        f"pass a one-token-per-line WordPiece vocabulary")
    lowercase = _vocab_txt_lowercase(path, vocab)
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=lowercase, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens([AddedToken(t, special=True) for t in WORDPIECE_SPECIALS.values() if t in vocab])
    _add_post_processor(tok, "wordpiece")
    return tok


def _is_sentencepiece(path):
    """An spm.model (by name, or by its first bytes: a protobuf whose first field is a piece; JSON starts with '{')."""
    if path.suffix == ".model":
        return True
    with open(path, "rb") as f:
        head = f.read(64)
    return path.suffix != ".json" and head[:1] == b"\n" and head.lstrip()[:1] != b"{"


SPM_UNIGRAM, SPM_UNKNOWN, SPM_CONTROL, SPM_USER_DEFINED = 1, 2, 3, 4  # sentencepiece_model.proto's enums


def _load_sentencepiece(path):
    """A SentencePiece Unigram model as a `tokenizers` Tokenizer that gives SentencePiece's ids (see the top)."""
    try:
        from google.protobuf.message import DecodeError
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:
        raise UserError(f"--tokenizer {path} is a SentencePiece model, and reading one needs the sentencepiece "
                        "package: pip install sentencepiece (spanbert_ds[hf] brings it)") from None
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except (DecodeError, ValueError):
        proto.Clear()
    if not proto.pieces:
        raise UserError(f"--tokenizer {path} is not a SentencePiece model (it does not parse as one; a download cut "
                        "short?); fetch it again, or pass a tokenizer.json or a vocab.txt")
    trainer, spec = proto.trainer_spec, proto.normalizer_spec
    if trainer.model_type != SPM_UNIGRAM:
        kind = {2: "BPE", 3: "word", 4: "char"}.get(trainer.model_type, f"type {trainer.model_type}")
        raise UserError(f"--tokenizer {path} is a SentencePiece {kind} model; only Unigram ones (DeBERTa-v3's "
                        "spm.model) are read directly: save it as a tokenizer.json with transformers' "
                        "AutoTokenizer(...).save_pretrained and pass that")
    # Control pieces ([PAD], [CLS], [SEP]) never come out of SentencePiece's encoder; here they are added tokens,
    # and their place in the Unigram lattice gets the lowest score, so that "[CLS]" written in the text, which
    # prepare encodes as text, is spelled in pieces as SentencePiece spells it.
    low = min(p.score for p in proto.pieces) - 100.0
    vocab = [(p.piece, low if p.type == SPM_CONTROL else p.score) for p in proto.pieces]
    tok = Tokenizer(models.Unigram(vocab, unk_id=trainer.unk_id, byte_fallback=trainer.byte_fallback))
    steps = [normalizers.Lowercase()] if _config_lowercase(path) else []
    if spec.precompiled_charsmap:  # the normalisation rule's table (nmt_nfkc in DeBERTa-v3)
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:  # spaces only, as SentencePiece
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    tok.normalizer = normalizers.Sequence(steps)
    prepend = "always" if spec.add_dummy_prefix else "never"
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prepend)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=prepend)
    tok.add_special_tokens([AddedToken(p.piece, special=True, normalized=False) for p in proto.pieces
                            if p.type in (SPM_UNKNOWN, SPM_CONTROL)])
    tok.add_tokens([AddedToken(p.piece, normalized=False) for p in proto.pieces if p.type == SPM_USER_DEFINED])
    if tok.token_to_id(UNIGRAM_SPECIALS["mask"]) is None:  # DeBERTa-v3's [MASK]: the id after the last piece
        tok.add_special_tokens([AddedToken(UNIGRAM_SPECIALS["mask"], special=True)])
    _add_post_processor(tok, "unigram")
    return tok


def _config_lowercase(path):
    """do_lower_case of the tokenizer_config.json beside a vocabulary file (None where it does not say)."""
    config = path.with_name("tokenizer_config.json")
    if config.is_file():
        try:
            value = json.loads(config.read_text()).get("do_lower_case")
            if isinstance(value, bool):
                return value
        except (ValueError, OSError, AttributeError):
            pass
    return None


def _vocab_txt_lowercase(path, vocab):
    """A vocab.txt does not say its casing: ask tokenizer_config.json beside it, else look at the tokens."""
    said = _config_lowercase(path)
    if said is not None:
        return said
    words = [t for t in vocab if t.isalpha()]
    upper = sum(t != t.lower() for t in words)
    return upper < 0.01 * max(len(words), 1)


def _add_post_processor(tok, kind):
    """So that tokenizer.json, exported with the model, adds [CLS]/[SEP] like the training data has."""
    s = SPECIALS[kind]
    cls, sep = s["cls"], s["sep"]
    cls_id, sep_id = tok.token_to_id(cls), tok.token_to_id(sep)
    if cls_id is None or sep_id is None:
        return
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, cls_id), (sep, sep_id)])


def kind_of(tok):
    model = json.loads(tok.to_str())["model"]["type"]
    return {"WordPiece": "wordpiece", "BPE": "bpe", "Unigram": "unigram"}.get(model)


def casing(tok):
    """(lowercases, strip_accents) of the tokenizer's normalizer: a BertNormalizer's settings, or
    Lowercase / StripAccents steps (also inside a Sequence). strip_accents is None where nothing says."""
    lowercase, strip_accents = False, None

    def visit(node):
        nonlocal lowercase, strip_accents
        if isinstance(node, list):
            for child in node:
                visit(child)
        elif isinstance(node, dict):
            kind = node.get("type")
            if kind == "BertNormalizer":
                lowercase = lowercase or bool(node.get("lowercase"))
                strip_accents = node.get("strip_accents") if strip_accents is None else strip_accents
            elif kind == "Lowercase":
                lowercase = True
            elif kind == "StripAccents":
                strip_accents = True
            for child in node.values():
                visit(child)

    visit(json.loads(tok.to_str()).get("normalizer"))
    return lowercase, strip_accents


def tokenizer_meta(tok, source="the tokenizer"):
    """The tokenizer's part of meta.json: kind, casing, vocab size, special ids."""
    kind = kind_of(tok)
    if kind is None:
        raise UserError(f"{source}: only WordPiece, BPE and Unigram tokenizers are supported; pass a BERT-, "
                        f"RoBERTa- or DeBERTa-v3-style tokenizer, or `wordpiece`/`bpe` to train one")
    ids = {}
    for role, token in SPECIALS[kind].items():
        ids[f"{role}_id"] = tok.token_to_id(token)
        if ids[f"{role}_id"] is None:
            train = f"train one with `--tokenizer {kind}`" if kind != "unigram" else "use DeBERTa-v3's spm.model"
            raise UserError(f"{source}: the {kind} tokenizer has no {token} token; add it to the vocabulary or {train}")
    if kind == "unigram" and not _marks_word_starts(tok):
        raise UserError(f"{source}: this Unigram tokenizer does not mark where words start (no Metaspace, as "
                        "SentencePiece's ▁), so whole-word and span masking could not find words; pass the spm.model")
    if kind == "bpe" and not _marks_word_starts(tok):
        raise UserError(f"{source}: this BPE tokenizer does not mark where words start (its pre-tokenizer is "
                        "neither ByteLevel, as RoBERTa's, nor Metaspace, as SentencePiece's), so whole-word and "
                        "span masking could not find words; use a byte-level BPE, or `bpe` to train one")
    added = [i for i, t in tok.get_added_tokens_decoder().items() if t.special]
    return {
        "tokenizer_kind": kind,
        "lowercase": casing(tok)[0],
        "vocab_size": vocab_size(tok),
        **ids,
        "special_ids": sorted(set(added) | set(ids.values())),
    }


def vocab_size(tok):
    """Rows an embedding needs: the largest id + 1 (ids may leave holes, as in a vocab.txt with a duplicate)."""
    return max(tok.get_vocab(with_added_tokens=True).values()) + 1


def _marks_word_starts(tok):
    """Does a BPE tokenizer put a word-start marker (Ġ or ▁) on tokens: a ByteLevel or Metaspace
    pre-tokenizer, or (older SentencePiece conversions) a normalizer that writes ▁ for spaces?"""
    def walk(node):
        if isinstance(node, dict):
            marks = node.get("type") in ("ByteLevel", "Metaspace") or \
                (node.get("type") == "Prepend" and node.get("prepend") == "▁") or \
                (node.get("type") == "Replace" and node.get("content") == "▁")
            return marks or any(walk(v) for v in node.values())
        return isinstance(node, list) and any(walk(v) for v in node)
    spec = json.loads(tok.to_str())
    return walk(spec.get("pre_tokenizer")) or walk(spec.get("normalizer"))


def word_start_table(tok):
    """Bool [vocab_size]: does this token id begin a word? (False for special tokens.)"""
    kind = kind_of(tok)
    vocab = tok.get_vocab(with_added_tokens=True)
    table = np.zeros(vocab_size(tok), dtype=bool)
    ids = np.fromiter(vocab.values(), dtype=np.int64, count=len(vocab))
    if kind == "wordpiece":
        starts = np.fromiter((not t.startswith("##") for t in vocab), dtype=bool, count=len(vocab))
    else:
        starts = np.fromiter((t.startswith(("Ġ", "▁")) for t in vocab), dtype=bool, count=len(vocab))
    table[ids] = starts
    table[tokenizer_meta(tok)["special_ids"]] = False
    return table

