"""The Hugging Face BERT and RoBERTa formats, both ways (the names themselves: interop/hf_names.py).

Export (`export_hf`) writes a folder that `transformers` opens unchanged:
  config.json            BertConfig, architectures ["BertForPreTraining"]; or, for a model without
                         segments (the roberta objective), RobertaConfig, ["RobertaForMaskedLM"]
  model.safetensors      BertForPreTraining names: bert.*, cls.predictions.* and, where an NSP
                         head was trained, bert.pooler.* and cls.seq_relationship.*; or
                         RobertaForMaskedLM names: roberta.*, lm_head.*
  sbo_head.safetensors   our SBO head (our names), when the objective has one
  tokenizer.json, vocab.txt (WordPiece) or vocab.json + merges.txt (byte-level BPE),
  tokenizer_config.json (with the right do_lower_case), special_tokens_map.json
The replaced-token detection objectives (electra, debertav3) train two networks, which HF keeps as two
models: interop/rtd_hf.py names them. The name tables both use are interop/hf_names.py.
Import (`load_hf_into`, behind `--init-from HF_DIR`) loads an HF BERT folder (BertModel or
BertForPreTraining names) or RoBERTa folder (RobertaModel or RobertaForMaskedLM names) into an
objective's encoder and heads, and reports what it had to initialise. What the folder holds that the
objective does not train but its export has a place for (BERT's pooler under spanbert) is kept in the run
folder (IMPORTED_FILE) and exported with the rest.

Our layout differs from HF's in four ways, all handled here: Q, K, V are one (3H, H)
projection (split/concatenated), vocabulary-sized tensors have padded_vocab_size rows
(stripped/zero-padded), an objective without segments (RoBERTa) has no segment table
(HF gets a zero one; an imported one is folded into the position table, which is exact
because every token of such a model has segment 0), and RoBERTa numbers positions from
pad_token_id + 1, so its position table has that many unused rows first (added/dropped).
"""

import json
import os
import pickle
import re

import torch
from torch import nn

from spanbert_ds.data.tokenizer import SPECIALS, casing, kind_of, vocab_size
from spanbert_ds.errors import UserError
from spanbert_ds.folders import save_safetensors
from spanbert_ds.interop import rtd_hf
from spanbert_ds.interop.hf_names import (DEBERTA_LEGACY, EMD_FILE, EMD_NAMES, HF_DERIVED, HF_SHAPE,
                                          SBO_FILE, SBO_PREFIX, VOCAB_ROWS, extra_files,
                                          hf_config_dict, name_pairs, position_offset, rename, roberta_to_bert,
                                          strip_wrapper_prefix, to_hf_state_dict)
from spanbert_ds.model.config import ModelConfig
from spanbert_ds.model.objectives import TIED
from spanbert_ds.run.folder import IMPORTED_FILE, read_imported, save_imported  # noqa: F401 (their old place)


def export_hf(objective_or_state_dict, model_config, tokenizer_source, out_dir, generator=False, imported=None):
    """Write an objective (or its state dict, e.g. consolidated from ZeRO) as an HF BERT folder (RoBERTa,
    DeBERTa-V2: see the top of this file). A replaced-token detection objective writes its discriminator,
    or with generator=True its generator (interop/rtd_hf.py). `imported`: tensors under our names that the
    model does not train but its HF model holds (read_imported: the pooler of the --init-from folder).

    tokenizer_source: a folder holding tokenizer.json (a shard folder, whose meta.json then
    gives the casing and special tokens, or an HF folder), a tokenizer.json path, an object
    with `.tokenizer()` and `.meta` (data.shards.Shards), or None for no tokenizer files.
    Returns the list of files written.
    """
    if isinstance(objective_or_state_dict, nn.Module):
        model_config = getattr(objective_or_state_dict, "config", model_config)
    if rtd_hf.is_rtd(objective_or_state_dict):
        config, hf, extras = rtd_hf.rtd_to_hf(objective_or_state_dict, model_config, generator)
    elif generator:
        name = getattr(objective_or_state_dict, "name", None)
        raise UserError(rtd_hf.NO_GENERATOR.format(what=f"the {name} objective" if name else "this model"))
    else:
        state = objective_or_state_dict
        state = state.state_dict() if isinstance(state, nn.Module) else strip_wrapper_prefix(state)
        hf, extra = to_hf_state_dict({**(imported or {}), **state}, model_config)
        config, extras = hf_config_dict(model_config), extra_files(extra)
    os.makedirs(out_dir, exist_ok=True)
    written = []

    def path(name):
        written.append(os.path.join(out_dir, name))
        return written[-1]

    with open(path("config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    save_safetensors(hf, path("model.safetensors"))
    for name, tensors in extras.items():
        if tensors:
            save_safetensors(tensors, path(name), metadata={"format": "pt", "vocab_size": str(model_config.vocab_size)})
    if tokenizer_source is not None:
        for name in write_tokenizer_files(tokenizer_source, out_dir, model_config):
            written.append(name)
    return written


# --- tokenizer files ----------------------------------------------------------------------------

# HF's names of the special tokens, from the one table of them (data/tokenizer.py's SPECIALS)
ROLES = ("unk", "sep", "pad", "cls", "mask")
META_SPECIAL_IDS = {f"{role}_token": f"{role}_id" for role in ROLES}


def _hf_special_tokens(kind):
    tokens = {f"{role}_token": SPECIALS[kind][role] for role in ROLES}
    if kind in ("bpe", "unigram"):  # RoBERTa's: sequences begin with <s> and end with </s>; DeBERTa-v3's: [CLS], [SEP]
        tokens.update(bos_token=tokens["cls_token"], eos_token=tokens["sep_token"])
    return tokens


def _tokenizer_and_meta(source):
    from tokenizers import Tokenizer

    if hasattr(source, "tokenizer") and hasattr(source, "meta"):
        return source.tokenizer(), dict(source.meta)
    if isinstance(source, Tokenizer):
        return source, None
    source = os.fspath(source)
    folder, file = (source, os.path.join(source, "tokenizer.json")) if os.path.isdir(source) else \
        (os.path.dirname(source), source)
    if not os.path.isfile(file):
        raise UserError(f"export: no tokenizer.json in {source}; pass the shard folder the model was trained on")
    meta = None
    if os.path.isfile(os.path.join(folder, "meta.json")):
        with open(os.path.join(folder, "meta.json")) as f:
            meta = json.load(f)
    return Tokenizer.from_file(file), meta


def write_tokenizer_files(source, out_dir, model_config):
    """tokenizer.json, vocab.txt (WordPiece) or vocab.json and merges.txt (byte-level BPE), tokenizer_config.json,
    special_tokens_map.json."""
    tokenizer, meta = _tokenizer_and_meta(source)
    spec = json.loads(tokenizer.to_str())
    kind = kind_of(tokenizer) or "bpe"
    lowercase, strip_accents = casing(tokenizer)
    if meta is not None and "lowercase" in meta:
        lowercase = bool(meta["lowercase"])  # the shard folder records what it was prepared with
    rows = vocab_size(tokenizer)  # ids may leave holes (a vocab.txt with a duplicate line)
    if rows != model_config.vocab_size:
        model_config.check_vocab(rows, where="the tokenizer")
    written = [os.path.join(out_dir, "tokenizer.json")]
    tokenizer.save(written[0])

    specials = _hf_special_tokens(kind)
    if meta is not None:
        for field, id_key in META_SPECIAL_IDS.items():
            if id_key in meta:
                specials[field] = tokenizer.id_to_token(int(meta[id_key]))
        if kind in ("bpe", "unigram"):
            specials["bos_token"], specials["eos_token"] = specials["cls_token"], specials["sep_token"]
    absent = sorted(t for t in set(specials.values()) if tokenizer.token_to_id(t) is None)
    if absent:
        raise UserError(f"export: the tokenizer has no special tokens {absent}; prepare the shards with "
                        "spanbert-ds prepare, which adds them")

    config = {"tokenizer_class": "BertTokenizer" if kind == "wordpiece" else "PreTrainedTokenizerFast",
              "do_lower_case": lowercase, "model_max_length": model_config.max_position_embeddings,
              "clean_up_tokenization_spaces": False, **specials}
    if kind == "wordpiece":
        config.update(strip_accents=strip_accents, tokenize_chinese_chars=True, do_basic_tokenize=True)
        vocab = spec["model"]["vocab"]  # token -> id
        # a line per id, since BertTokenizer numbers the lines: an id no token has (a vocab.txt with a
        # duplicate line) gets a placeholder line
        tokens = [f"[unused_id_{i}]" for i in range(max(vocab.values()) + 1)]
        for token, index in vocab.items():
            tokens[index] = token
        written.append(os.path.join(out_dir, "vocab.txt"))
        with open(written[-1], "w", encoding="utf-8") as f:
            f.write("".join(token + "\n" for token in tokens))
    elif kind == "bpe":  # what RoBERTa's own tokenizer files hold, for tools that read them
        written.append(os.path.join(out_dir, "vocab.json"))
        with open(written[-1], "w", encoding="utf-8") as f:
            json.dump(spec["model"]["vocab"], f, ensure_ascii=False)
        written.append(os.path.join(out_dir, "merges.txt"))
        with open(written[-1], "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n")
            f.writelines((m if isinstance(m, str) else " ".join(m)) + "\n" for m in spec["model"]["merges"])
    written.append(os.path.join(out_dir, "tokenizer_config.json"))
    with open(written[-1], "w") as f:
        json.dump(config, f, indent=2)
    written.append(os.path.join(out_dir, "special_tokens_map.json"))
    with open(written[-1], "w") as f:
        json.dump(specials, f, indent=2)
    return written


# --- import -------------------------------------------------------------------------------------


def _read_hf_config(hf_dir):
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise UserError(f"--init-from {hf_dir}: no config.json there; point it at a Hugging Face BERT model folder")
    try:
        with open(path, encoding="utf-8") as f:
            hf = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not valid JSON ({error}); the folder is damaged (an interrupted download?): "
                        "fetch config.json again") from None
    if not isinstance(hf, dict):
        raise UserError(f"{path}: holds a JSON {type(hf).__name__}, not the object of settings a model config is")
    missing = [key for key in HF_SHAPE if key not in hf]
    if missing:
        raise UserError(f"{path}: no {', '.join(missing)}; a BERT, RoBERTa or DeBERTa config.json gives the "
                        f"model's shape ({', '.join(HF_SHAPE)}): fetch it again or add the missing keys")
    wrong = {key: hf[key] for key in HF_SHAPE + ("max_position_embeddings", "type_vocab_size", "pad_token_id")
             if key in hf and not _whole(hf[key], none=key == "pad_token_id")}
    if wrong:
        raise UserError(f"{path}: {', '.join(f'{k} {v!r}' for k, v in wrong.items())}: "
                        f"{'each must be a whole number' if len(wrong) > 1 else 'must be a whole number'}")
    if hf.get("model_type", "bert") not in ("bert", "roberta", "deberta-v2"):
        raise UserError(f"{path}: model_type is {hf.get('model_type')!r}; only BERT, RoBERTa and DeBERTa V2/V3 "
                        "checkpoints can be imported")
    if hf.get("model_type") == "deberta-v2":
        unsupported = {"relative_attention": (hf.get("relative_attention", False), True),
                       "pos_att_type": (pos_att_parts(hf.get("pos_att_type"), path), ["c2p", "p2c"]),
                       "share_att_key": (hf.get("share_att_key", False), True),
                       "position_biased_input": (hf.get("position_biased_input", True), False),
                       "norm_rel_ebd": ("layer_norm" in str(hf.get("norm_rel_ebd", "none")), True),
                       "conv_kernel_size": (hf.get("conv_kernel_size", 0) > 0, False),
                       "embedding_size": (hf.get("embedding_size", hf["hidden_size"]), hf["hidden_size"]),
                       "position_buckets": (hf.get("position_buckets", -1) > 0, True)}
        wrong = [name for name, (value, wanted) in unsupported.items() if value != wanted]
        if wrong:
            raise UserError(f"{path}: a DeBERTa with {', '.join(f'{n}={hf.get(n)!r}' for n in wrong)}; the deberta "
                            "backbone is V2/V3's: relative attention (c2p and p2c) with shared keys, log-bucketed "
                            "positions, LayerNorm'd relative embeddings, no absolute positions at the input, no "
                            "convolution, embedding_size = hidden_size")
    if hf.get("hidden_act", "gelu") != "gelu":
        raise UserError(f"{path}: hidden_act is {hf['hidden_act']!r}; our encoder uses BERT's exact (erf) 'gelu'")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise UserError(f"{path}: position_embedding_type {hf['position_embedding_type']!r} is not supported "
                        "(absolute only)")
    return hf


# The parts of DeBERTa's pos_att_type that its code knows (V1's p2p and "none" too, which our backbone refuses).
POS_ATT_PARTS = ("c2p", "p2c", "p2p", "none")


def pos_att_parts(value, path):
    """DeBERTa's pos_att_type as its sorted parts: the released configs write a string ("p2c|c2p", V3's
    config.json), transformers' saves a list (["p2c", "c2p"]); both split as transformers' DebertaV2Config does."""
    if value is None:
        return []
    parts = value.lower().split("|") if isinstance(value, str) else value
    if not isinstance(parts, list) or not all(isinstance(part, str) for part in parts):
        raise UserError(f"{path}: pos_att_type is {value!r}; write it as DeBERTa V2/V3 configs do: \"p2c|c2p\" or "
                        '["p2c", "c2p"]')
    parts = sorted({part.strip().lower() for part in parts} - {"none", ""})
    unknown = [part for part in parts if part not in POS_ATT_PARTS]
    if unknown:
        raise UserError(f"{path}: pos_att_type {value!r} has {', '.join(map(repr, unknown))}, which DeBERTa does not "
                        f"know (its parts are {', '.join(POS_ATT_PARTS[:3])}); write \"p2c|c2p\" as V2/V3 configs do")
    return parts


def _whole(value, none=False):
    return (value is None and none) or (isinstance(value, int) and not isinstance(value, bool))


def config_from_hf(hf_dir, **overrides):
    """A ModelConfig with the shape of the HF BERT in hf_dir (our defaults for everything else)."""
    hf = _read_hf_config(hf_dir)
    values = dict(
        vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"],
        max_position_embeddings=hf.get("max_position_embeddings", 512)
        - (position_offset(hf.get("pad_token_id", 1)) if hf.get("model_type") == "roberta" else 0),
        type_vocab_size=hf.get("type_vocab_size", 2),
        hidden_dropout=hf.get("hidden_dropout_prob", 0.1),
        attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12), initializer_range=hf.get("initializer_range", 0.02),
        pad_token_id=hf.get("pad_token_id") or 0,
    )
    sbo_path = os.path.join(hf_dir, SBO_FILE)
    if os.path.isfile(sbo_path):
        position = _read_tensors(sbo_path).get(SBO_PREFIX + "position.weight")
        if position is None or position.dim() != 2:
            raise UserError(f"{sbo_path}: no 2-D {SBO_PREFIX}position.weight; it is not an SBO head of ours")
        values.update(sbo_max_targets=position.shape[0], sbo_position_dim=position.shape[1])
    if hf.get("model_type") == "deberta-v2":
        values.update(backbone="deberta", type_vocab_size=hf.get("type_vocab_size", 0),
                      position_buckets=hf["position_buckets"], max_relative_positions=hf.get("max_relative_positions", -1),
                      layer_norm_eps=hf.get("layer_norm_eps", 1e-7),
                      emd=os.path.isfile(os.path.join(hf_dir, EMD_FILE)))
    values.update(overrides)
    try:
        return ModelConfig(**values)
    except UserError as error:
        raise UserError(f"{os.path.join(hf_dir, 'config.json')}: {str(error).removeprefix('model config: ')}") from None


def _read_tensors(path):
    """The named tensors of a safetensors or PyTorch weights file; one line naming it when it cannot be read.
    torch.load takes tensors and plain values only (weights_only): a pickle that would run code is refused."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            tensors = load_file(path)
        else:
            tensors = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as error:
        raise UserError(f"{path}: cannot be read ({error.strerror or error})") from None
    except pickle.UnpicklingError as error:
        message = str(error)
        if "Weights only load failed" not in message:
            raise UserError(f"{path}: cut short or damaged ({_first_words(message)}); fetch it again") from None
        # torch's own text is a paragraph on how to load the file anyway; keep what the file asked for
        asked = re.search(r"GLOBAL ([\w.]+)", message)
        reason = f"the pickle asks for {asked.group(1)}" if asked else "an unsupported pickle instruction"
        raise UserError(f"{path}: holds code to run, not only tensors ({reason}); refusing to load it: fetch the "
                        "model from a source you trust, or use its model.safetensors") from None
    except Exception as error:  # noqa: BLE001 - safetensors' and torch's errors for a file cut short or damaged
        raise UserError(f"{path}: cut short or damaged ({_first_words(str(error)) or 'it ends early'}), as an "
                        "interrupted download leaves it; fetch it again") from None
    if not isinstance(tensors, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in tensors.items()):
        raise UserError(f"{path}: holds a {type(tensors).__name__}, not a dict of named tensors; it is not a model's "
                        "weights file")
    return tensors


def _first_words(message):
    """The first sentence of an error message, on one line (torch adds paragraphs of advice)."""
    return message.strip().splitlines()[0].split(". ")[0][:200] if message.strip() else ""


def _current_name(hf_name):
    """Original BERT checkpoints (TF conversions) call the LayerNorm parameters gamma and beta;
    transformers renames them on load, and so do we."""
    if hf_name.endswith(".gamma"):
        return hf_name[: -len("gamma")] + "weight"
    if hf_name.endswith(".beta"):
        return hf_name[: -len("beta")] + "bias"
    return hf_name


def load_hf_into(objective, hf_dir):
    """Load an HF BERT or RoBERTa folder into `objective` in place; return what was loaded and what was not.

    Accepts BertModel names (embeddings.*, encoder.*, pooler.*), BertForPreTraining / BertForMaskedLM
    names (bert.*, cls.*) and RoBERTa's (roberta.*, lm_head.*); also our sbo_head.safetensors when present.
    Returns {"loaded": [our names], "initialised": [our names left as initialised],
    "ignored": [HF names not used], "kept": {our name: tensor}}: "kept" are the tensors the objective has no
    place for but its export does (BERT's pooler under spanbert), which a run saves with save_imported.
    """
    config = objective.config
    hf_config = _read_hf_config(hf_dir)
    if config.pre_layernorm:
        raise UserError(f"--init-from {hf_dir}: Hugging Face BERT is post-LayerNorm and this model is pre-LayerNorm "
                        "(pre_layernorm true), so the checkpoint's weights would sit in the wrong places; "
                        "drop pre_layernorm=true to start from it")
    wanted = {"vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
              "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
              "intermediate_size": config.intermediate_size, "layer_norm_eps": config.layer_norm_eps}
    # transformers' defaults, for configs that leave it out
    defaults = {"layer_norm_eps": 1e-7 if hf_config.get("model_type") == "deberta-v2" else 1e-12}
    wrong = {k: (hf_config.get(k, defaults.get(k)), v) for k, v in wanted.items()
             if hf_config.get(k, defaults.get(k)) != v}
    if wrong:
        detail = ", ".join(f"{k} {hf} (model: {ours})" for k, (hf, ours) in wrong.items())
        raise UserError(f"--init-from {hf_dir}: the checkpoint's config differs from the model's: {detail}; "
                        "leave --model out to take the checkpoint's shape, or add ,key=value overrides to --model")
    files = [f for f in ("model.safetensors", "pytorch_model.bin") if os.path.isfile(os.path.join(hf_dir, f))]
    if not files:
        raise UserError(f"--init-from {hf_dir}: no model.safetensors (or pytorch_model.bin) there")
    hf = {_current_name(k): v for k, v in _read_tensors(os.path.join(hf_dir, files[0])).items()}
    model_type = hf_config.get("model_type", "bert")
    if (model_type == "deberta-v2") != (config.backbone == "deberta"):
        raise UserError(f"--init-from {hf_dir}: a {model_type} checkpoint cannot start a model "
                        f"with the {config.backbone} backbone; leave --model out to take the checkpoint's")
    prefix = {"roberta": "roberta.", "deberta-v2": "deberta."}.get(model_type, "bert.")
    if not any(k.startswith(prefix) for k in hf):  # BertModel / RobertaModel / DebertaV2Model names: add the prefix
        hf = {(prefix + k if k.split(".")[0] in ("embeddings", "encoder", "pooler") else k): v for k, v in hf.items()}
    if model_type == "roberta":
        hf = roberta_to_bert(hf, hf_config)
    elif model_type == "deberta-v2":
        hf = {rename(k, DEBERTA_LEGACY): v for k, v in hf.items()}


    params = dict(objective.state_dict(keep_vars=True))
    loaded, kept, used = {}, {}, set()
    keeps = config.backbone == "bert" and not rtd_hf.is_rtd(objective)  # BertForPreTraining holds what it lacks
    for ours, names in name_pairs(config):
        group = names if isinstance(names, tuple) else (names,)
        if not all(n in hf for n in group):
            continue
        tensor = torch.cat([hf[n] for n in group], dim=0) if len(group) > 1 else hf[group[0]]
        if ours == "encoder.embeddings.token_type.weight" and ours not in params:
            # No segment table here (RoBERTa): every token would have had segment 0, whose row HF adds
            # to every position; fold it into the position table so the outputs stay the same.
            loaded["encoder.embeddings.position.weight"] = loaded["encoder.embeddings.position.weight"] + tensor[0]
        elif ours in params:
            loaded[ours] = tensor
        elif keeps:
            kept[ours] = tensor  # a head this objective does not have (e.g. NSP for spanbert): kept for the export
        else:
            continue  # ... which an RTD export has no place for: reported as ignored
        used.update(group)
    for extra in (SBO_FILE, EMD_FILE):
        path = os.path.join(hf_dir, extra)
        if os.path.isfile(path):
            loaded.update({k: v for k, v in _read_tensors(path).items() if k in params})

    for ours, tensor in loaded.items():  # every shape first: an error must leave the model untouched
        target = params[ours]
        if ours in VOCAB_ROWS:
            padded = torch.zeros_like(target)
            padded[: tensor.shape[0]] = tensor
            loaded[ours] = tensor = padded
        if tuple(tensor.shape) != tuple(target.shape):
            raise UserError(f"--init-from {hf_dir}: {ours} has shape {tuple(tensor.shape)} in the checkpoint but "
                            f"{tuple(target.shape)} in the model (check max_position_embeddings and "
                            "type_vocab_size in both configs)")
    # The EMD's absolute positions have no place in DebertaV2: a released checkpoint (DeBERTa-v3's) has none, so
    # the deberta objective starts them as initialised; our own exports bring them in EMD_FILE.
    missing = [k for k in params if k.startswith("encoder.") and k not in loaded and k not in EMD_NAMES]
    if missing:
        raise UserError(f"--init-from {hf_dir}: the checkpoint has no {', '.join(missing[:3])}"
                        + (f" (and {len(missing) - 3} more)" if len(missing) > 3 else "")
                        + " for this encoder; it is not a BERT checkpoint this model can start from")
    with torch.no_grad():
        for ours, tensor in loaded.items():
            params[ours].copy_(tensor)
    initialised = [k for k in params if k not in loaded and k not in TIED]
    ignored = sorted(k for k in hf if k not in used and not HF_DERIVED.search(k))
    decoder = hf.get("cls.predictions.decoder.weight")
    word = hf.get("bert.embeddings.word_embeddings.weight")
    if decoder is not None and word is not None and not torch.equal(decoder, word):
        ignored.append("cls.predictions.decoder.weight (untied from the word embeddings; ours are tied)")
    return {"loaded": sorted(loaded), "initialised": initialised, "ignored": ignored,
            "kept": {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in sorted(kept.items())}}


def format_report(report):
    """One line for the training log, e.g. after --init-from."""
    heads = sorted({k.split(".")[0] for k in report["initialised"]})
    text = f"loaded {len(report['loaded'])} tensors"
    if report["initialised"]:
        text += f"; initialised {len(report['initialised'])} ({', '.join(heads)})"
    if report.get("kept"):
        kept = sorted({k.rsplit(".", 1)[0] for k in report["kept"]})
        text += f"; kept {len(report['kept'])} this objective does not train, for the export ({', '.join(kept)})"
    if report["ignored"]:
        text += f"; ignored {len(report['ignored'])} from the checkpoint ({', '.join(report['ignored'][:4])}"
        text += ", ...)" if len(report["ignored"]) > 4 else ")"
    return text
