"""`inspect`: what a checkpoint holds, and what decoding one token costs in weight bytes.

The question it answers first: are the MTP heads still there? Conversions and quantisations often
drop the MTP tensors (or keep them at a much lower precision than the trunk) while the config still
declares them. Three inputs give one report with the same keys:

* a full safetensors checkpoint directory (`summarize(load_model(path))`);
* a directory with `config.json` + `model.safetensors.index.json` and some or none of the shards:
  names come from the index, dtypes and sizes from whatever shards are present (`summarize_index`);
* a `.gguf` file, read with llama.cpp's own `gguf` package (`summarize_gguf`): the MTP ("nextn")
  blocks are the last `{arch}.nextn_predict_layers` of `{arch}.block_count`, tensors `blk.{i}.nextn.*`.

`inspect_path` picks one; `verdict` says the answer in one sentence. Bad input raises MtpRefError.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from .config import load_config
from .errors import MtpRefError
from .families import family_for, mtp_tensors, trunk_tensors, with_checkpoint_layout
from .model import BUNDLED, Model, load_model
from .safetensors_io import read_header

# MTP matrices below this many bits per weight, and at most this fraction of the trunk's, get a warning:
# a Q4 head on a Q8/F16 trunk drafts worse than the trunk it serves; Q8 / FP8 heads are what releases ship
_LOW_BITS, _LOW_RATIO = 8.0, 0.6


def inspect_path(path: str | Path | None = None) -> dict:
    """The inspection report of a checkpoint directory (full or index-only) or a .gguf file
    (None: the bundled model). Same keys for all three; raises MtpRefError on bad input."""
    p = BUNDLED if path is None else Path(path)
    if p.is_file():
        if p.suffix.lower() == ".gguf" or _starts_with(p, b"GGUF"):
            return summarize_gguf(p)
        raise MtpRefError(f"{p}: not a checkpoint; give the directory that holds config.json "
                          f"(and model.safetensors or its index), or a .gguf file")
    idx = p / "model.safetensors.index.json"
    from .ops_v4 import inspect_report as inspect_v4
    own = inspect_v4(p) if p.is_dir() else None        # DeepSeek-V4 (an engine of its own, ops_v4), index-only too
    if own is not None:
        return own
    if p.is_dir() and idx.exists():
        missing = [s for s in sorted(set(_weight_map(idx).values())) if not (p / s).exists()]
        if missing:
            return summarize_index(p)
    from .gemma4 import inspect_report
    own = inspect_report(p) if p.is_dir() else None    # Gemma 4 target or assistant (no MTP modules inside)
    return own if own is not None else summarize(load_model(p))


def summarize(model: Model) -> dict:
    cfg, spec, ck = model.config, model.spec, model.ckpt
    trunk = trunk_tensors(cfg, spec)
    n_params = sum(_numel(ck.shape(n)) for n in ck.names() if not n.endswith("_scale_inv"))
    dtypes = Counter(ck.dtype(n) for n in ck.names())
    bpt = _bytes_per_token(cfg, {n: ck.stored_nbytes(n) for n in trunk})
    mtp = []
    for j in range(cfg.num_mtp_modules):
        names = [n for n in mtp_tensors(cfg, spec, j) if n in ck]
        mtp.append(_module(j, spec.mtp.module_prefix(cfg, j), {n: ck.dtype(n) for n in names},
                           sum(ck.stored_nbytes(n) for n in names)))
    warnings = _missing_module_warning(cfg, spec, cfg.num_mtp_modules)
    mtp_names = {n for j in range(cfg.num_mtp_modules) for n in mtp_tensors(cfg, spec, j)}
    extra = sorted(set(ck.names()) - set(trunk) - mtp_names - {n for n in ck.names() if n.endswith("_scale_inv")})
    extra = [n for n in extra if not any(n.startswith(m["prefix"]) for m in mtp)]
    (tb, tt), (mb, mt) = _st_precision(ck.infos, trunk), _st_precision(ck.infos, mtp_names)
    bits, types = {"trunk": tb, "mtp": mb}, {"trunk": tt, "mtp": mt}
    warnings += _precision_warning(bits)
    return {
        "path": str(model.path),
        "format": "safetensors",
        **_config_keys(cfg, spec),
        "mtp_present": cfg.num_mtp_modules,
        "mtp_modules": mtp,
        "bits_per_weight": bits,
        "matrix_types": types,
        "dtypes": dict(dtypes),
        "fp8_block": bool(cfg.quantization_config),
        "parameters": n_params,
        "checkpoint_bytes": sum(i.nbytes for i in ck.infos.values()),
        "bytes_per_token_trunk": bpt,
        "unused_tensors": extra[:20],
        "missing_shards": [],
        "warnings": warnings,
        "notes": [],
    }


def summarize_index(path: Path) -> dict:
    """The report from config.json + model.safetensors.index.json alone (a 600 GB release checked from its
    100 KB index). Tensor names come from the index; dtypes, shapes and bytes from the shards that are present."""
    path = Path(path)
    cfg = load_config(path)
    spec = family_for(cfg)
    wmap = _weight_map(path / "model.safetensors.index.json")
    shards = sorted(set(wmap.values()))
    missing = [s for s in shards if not (path / s).exists()]
    infos = {}
    for s in shards:
        if s not in missing:
            infos.update(read_header(path / s))  # a present but truncated shard is still an error
    names = {}  # engine name -> release name (the same, under a multimodal alias, or per spec.tensor_renames)
    for n in wmap:
        alias = next((a for a in spec.trunk_aliases if n.startswith(a)), None)
        e = "model." + n[len(alias):] if alias else n
        for pattern, repl in spec.tensor_renames:
            e = re.sub(pattern, repl, e)
        names.setdefault(e, n)
    spec = with_checkpoint_layout(spec, cfg, names)
    info = {k: infos[v] for k, v in names.items() if v in infos}
    if cfg.rope.partial_rotary_factor is None:
        cfg.rope.partial_rotary_factor = spec.partial_rotary_default
    trunk = trunk_tensors(cfg, spec)
    warnings = []
    absent = [n for n in trunk if n not in names]
    if absent:
        warnings.append(f"the index lists no '{absent[0]}' ({len(absent)} trunk tensor(s) missing): "
                        f"this copy cannot run at all")
    present, partial = _mtp_modules_by_name(cfg, spec, names)
    if partial:
        warnings.append(f"MTP module {present} is incomplete: the index lists no '{partial}'")
    mtp, mtp_names = [], set()
    for j in range(present):
        mine = [n for n in mtp_tensors(cfg, spec, j) if n in names]
        mtp_names.update(mine)
        mtp.append(_module(j, spec.mtp.module_prefix(cfg, j), {n: info[n].dtype if n in info else None for n in mine},
                           _sum_or_none(info[n].nbytes if n in info else None for n in mine)))
    warnings += _missing_module_warning(cfg, spec, present)
    known = len(info) == len(names)
    (tb, tt), (mb, mt) = _st_precision(info, trunk), _st_precision(info, mtp_names)
    bits, types = {"trunk": tb, "mtp": mb}, {"trunk": tt, "mtp": mt}
    warnings += _precision_warning(bits)
    total = json.loads((path / "model.safetensors.index.json").read_text()).get("metadata", {}).get("total_size")
    notes = [f"{len(missing)} of {len(shards)} shard(s) listed in model.safetensors.index.json are not here "
             f"(e.g. {missing[0]}): names come from the index; dtypes and bytes only from the shards present"]
    return {
        "path": str(path),
        "format": "safetensors-index",
        **_config_keys(cfg, spec),
        "mtp_present": present,
        "mtp_modules": mtp,
        "bits_per_weight": bits,
        "matrix_types": types,
        "dtypes": dict(Counter(i.dtype for i in infos.values())),
        "fp8_block": bool(cfg.quantization_config),
        "parameters": sum(_numel(i.shape) for n, i in info.items() if not n.endswith("_scale_inv")) if known else None,
        "checkpoint_bytes": int(total) if isinstance(total, (int, float)) else None,
        "bytes_per_token_trunk": (_bytes_per_token(cfg, {n: info[n].nbytes + _scale_bytes(info, n) for n in trunk})
                                  if known and not absent else None),
        "unused_tensors": sorted(n for n in set(names) - set(trunk) - mtp_names if not n.endswith("_scale_inv"))[:20],
        "missing_shards": missing,
        "warnings": warnings,
        "notes": notes,
    }


def summarize_gguf(path: Path) -> dict:
    """The report of a GGUF file, as llama.cpp's converter writes MTP: `{arch}.block_count` counts the trunk
    blocks AND the `{arch}.nextn_predict_layers` MTP blocks after them; block i of those holds `blk.{i}.nextn.*`
    (eh_proj, enorm, hnorm, shared_head_norm; embed_tokens, shared_head_head optional) beside an ordinary block."""
    path = Path(path)
    gguf = _import_gguf()
    try:
        r = gguf.GGUFReader(path, "r")
    except Exception as e:  # the reader raises ValueError, IndexError, ... on a cut or foreign file
        raise MtpRefError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e}); it is truncated or not "
                          f"GGUF: re-download it") from None
    size = path.stat().st_size
    for t in r.tensors:
        if t.data_offset + t.n_bytes > size:
            raise MtpRefError(f"{path}: tensor '{t.name}' ends at byte {t.data_offset + t.n_bytes} but the file has "
                              f"only {size} bytes; the file is truncated (an interrupted download?): re-download it")

    def field(key, default=None):
        f = r.get_field(key)
        return default if f is None else f.contents()

    arch = field("general.architecture")
    if not isinstance(arch, str):
        raise MtpRefError(f"{path}: no general.architecture in the GGUF metadata; the file is not a model")
    blocks = field(f"{arch}.block_count")
    if not isinstance(blocks, int):
        raise MtpRefError(f"{path}: no {arch}.block_count in the GGUF metadata; the file is not a model")
    declared = int(field(f"{arch}.nextn_predict_layers", 0) or 0)
    L = blocks - declared  # trunk blocks
    tensors = {t.name: t for t in r.tensors}
    qtype = {n: t.tensor_type.name for n, t in tensors.items()}

    def block_of(name):
        if name.startswith("blk."):
            i = name.split(".")[1]
            return int(i) if i.isdigit() else None
        return None

    # an MTP block counts when its own glue is there (a converter that drops MTP leaves none of it)
    required = ("eh_proj", "enorm", "hnorm")
    mtp_blocks = [i for i in range(L, blocks) if all(f"blk.{i}.nextn.{k}.weight" in tensors for k in required)]
    # depth order: the modules are consecutive from L on; a gap ends the chain the drafter can use
    present = 0
    while L + present in mtp_blocks:
        present += 1
    stray = sorted({b for n in tensors if ".nextn." in n and (b := block_of(n)) is not None} - set(range(L, L + present)))
    mtp, mtp_names = [], set()
    for j in range(present):
        mine = sorted(n for n in tensors if block_of(n) == L + j)
        mtp_names.update(mine)
        mtp.append(_module(j, f"blk.{L + j}.", {n: qtype[n] for n in mine}, sum(int(tensors[n].n_bytes) for n in mine)))
    trunk = [n for n in tensors if n not in mtp_names and (block_of(n) is None or block_of(n) < L)]
    (tb, tt), (mb, mt) = _gguf_precision(tensors, trunk), _gguf_precision(tensors, mtp_names)
    bits, types = {"trunk": tb, "mtp": mb}, {"trunk": tt, "mtp": mt}
    warnings = []
    if declared > present:
        warnings.append(f"the GGUF metadata declares {arch}.nextn_predict_layers={declared} but the file holds "
                        f"{present} MTP block(s): tensors 'blk.{L + present}.nextn.*' are missing. Converters and "
                        f"quantisers often drop them; MTP drafting is impossible with this copy.")
    if stray:
        warnings.append(f"nextn tensors in block(s) {stray} lie outside the MTP blocks {L}..{blocks - 1} that the "
                        f"metadata implies; the file is inconsistent")
    warnings += _precision_warning(bits)
    n_exp = int(field(f"{arch}.expert_count", 0) or 0)
    vocab = field(f"{arch}.vocab_size")
    if not isinstance(vocab, int):
        toks = r.get_field("tokenizer.ggml.tokens")
        emb = tensors.get("token_embd.weight")
        vocab = len(toks.data) if toks is not None else (int(emb.shape[-1]) if emb is not None else None)
    emb_bytes = int(tensors["token_embd.weight"].n_bytes) if "token_embd.weight" in tensors else 0
    exp_bytes = sum(int(tensors[n].n_bytes) for n in trunk if "_exps." in n)
    dense = sum(int(tensors[n].n_bytes) for n in trunk if "_exps." not in n and n != "token_embd.weight")
    used = int(field(f"{arch}.expert_used_count", 0) or 0)
    bpt = dense + (emb_bytes // vocab if vocab else 0) + (exp_bytes * used // n_exp if n_exp else 0)
    return {
        "path": str(path),
        "format": "gguf",
        "family": arch,
        "model_type": arch,
        "layers": L,
        "hidden_size": field(f"{arch}.embedding_length"),
        "vocab_size": vocab,
        "attention": "mla" if r.get_field(f"{arch}.attention.kv_lora_rank") is not None else "gqa",
        "linear_attention_layers": len({block_of(n) for n in trunk if ".ssm_" in n}),
        "moe_layers": len({block_of(n) for n in trunk if ".ffn_gate_inp." in n}),
        "routed_experts": n_exp,
        "experts_per_token": used,
        "shared_experts": int(field(f"{arch}.expert_shared_count", 0) or 0),
        "mtp_declared": declared,
        "mtp_present": present,
        "mtp_modules": mtp,
        "bits_per_weight": bits,
        "matrix_types": types,
        "dtypes": dict(Counter(qtype.values())),
        "fp8_block": False,
        "parameters": sum(int(t.n_elements) for t in tensors.values()),
        "checkpoint_bytes": size,
        "bytes_per_token_trunk": bpt,
        "unused_tensors": [],
        "missing_shards": [],
        "warnings": warnings,
        "notes": ["GGUF is inspected only; mtp-ref runs safetensors checkpoints"],
    }


def verdict(report: dict) -> str:
    """The answer to "are my MTP heads still there?" in one plain sentence."""
    if report.get("verdict"):                              # a family that says it itself (Gemma 4)
        return report["verdict"]
    d, p = report["mtp_declared"], report["mtp_present"]
    bits = report["bits_per_weight"]
    where = " (from the index; some shards are not here)" if report.get("missing_shards") else ""
    if d == 0 and p == 0:
        return f"No MTP heads: the config declares none and the file holds none{where}; this model cannot draft for itself."
    if p < d:
        return (f"MTP heads missing: the config declares {d} module(s) but the file holds {_count(p, 'module')}"
                f"{where}; get a copy that keeps the MTP tensors.")
    if _low_precision(bits):
        return (f"MTP heads present ({p} of {d} declared), but stored at {bits['mtp']:.1f} bits per weight against "
                f"the trunk's {bits['trunk']:.1f}: expect lower acceptance.")
    head = f"MTP heads present: {p} of {_count(d, 'declared module')}" if d else f"MTP heads present: {_count(p, 'module')} (none declared)"
    mtp_t, trunk_t = report["matrix_types"]["mtp"], report["matrix_types"]["trunk"]
    if mtp_t and trunk_t:
        how = f"stored in {mtp_t} like the trunk" if mtp_t == trunk_t else f"stored in {mtp_t}, the trunk mostly in {trunk_t}"
        return f"{head}, {how}{where}."
    return f"{head}{where}."


def format_summary(s: dict) -> str:
    lines = [f"checkpoint   {s['path']} ({s['format']})",
             f"verdict      {verdict(s)}",
             f"family       {s['family']} ({s['attention']} attention)",
             f"layers       {s['layers']} (hidden {s['hidden_size']}, vocab {s['vocab_size']})"]
    if s["linear_attention_layers"]:
        lines.append(f"hybrid       {s['linear_attention_layers']} Gated DeltaNet (linear attention) layers, "
                     f"{s['layers'] - s['linear_attention_layers']} full attention")
    if s["routed_experts"]:
        lines.append(f"MoE          {s['moe_layers']} MoE layers, {s['routed_experts']} routed experts "
                     f"(top-{s['experts_per_token']}) + {s['shared_experts']} shared")
    lines.append(f"MTP          declared {s['mtp_declared']}, present {s['mtp_present']}")
    for m in s["mtp_modules"]:
        size = f"{m['bytes'] / 1e6:.2f} MB" if m["bytes"] is not None else "size unknown"
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(m["dtypes"].items()))
        lines.append(f"             module {m['module']}: {m['prefix']}*  {m['tensors']} tensors, {size} ({kinds})")
    b = s["bits_per_weight"]
    if b["trunk"] is not None or b["mtp"] is not None:
        lines.append("bits/weight  " + ", ".join(f"{k} {v:.2f}" for k, v in b.items() if v is not None)
                     + " (matrices)")
    lines.append("dtypes       " + ", ".join(f"{k}: {v} tensors" for k, v in sorted(s["dtypes"].items())))
    if s["parameters"] is not None:
        lines.append(f"parameters   {s['parameters']:,}" + (" (FP8 block-quantised)" if s["fp8_block"] else ""))
    if s["checkpoint_bytes"] is not None:
        lines.append(f"file bytes   {s['checkpoint_bytes']:,}")
    if s["bytes_per_token_trunk"] is not None:
        lines.append(f"bytes/token  {s['bytes_per_token_trunk']:,} (trunk weights read to decode one token)")
    if s["unused_tensors"]:
        lines.append(f"unused       {len(s['unused_tensors'])} tensors not read by the engine, e.g. {s['unused_tensors'][0]}")
    for n in s["notes"]:
        lines.append(f"note         {n}")
    for w in s["warnings"]:
        lines.append(f"WARNING      {w}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- helpers

def _module(j: int, prefix: str, types: dict, nbytes) -> dict:
    """One MTP module's entry: its tensors' storage types (dtype or GGUF quantisation), by name and counted."""
    return {"module": j, "prefix": prefix, "tensors": len(types), "bytes": nbytes,
            "dtypes": dict(Counter(t for t in types.values() if t is not None)), "tensor_types": types}


def _missing_module_warning(cfg, spec, present: int) -> list[str]:
    if cfg.num_nextn_predict_layers <= present:
        return []
    where = (f"tensors under '{spec.mtp.module_prefix(cfg, present)}*' are missing" if spec.mtp else
             f"no MTP tensors are there (mtp-ref knows no MTP layout for {spec.name}: none has been published)")
    return [f"config.json declares {cfg.mtp_declared_by}={cfg.num_nextn_predict_layers} but the weights "
            f"hold {present} MTP module(s): {where}. "
            f"Conversions and quantisations often drop them; MTP drafting is impossible with this copy."]


def _mtp_modules_by_name(cfg, spec, names) -> tuple[int, str | None]:
    """How many MTP modules the names hold, by model.count_mtp_modules' rule without shapes (an index has none):
    module n counts when all of its own non-optional tensors are listed. Also the first missing name of a module
    that is there in part (None if none is)."""
    if spec.mtp is None:
        return 0, None
    n = 0
    while True:
        want = mtp_tensors(cfg, spec, n)
        optional = {spec.mtp.module_prefix(cfg, n) + s for s in (spec.mtp.head, spec.mtp.embed) if s}
        own = [k for k in want if n == 0 or k.startswith(spec.mtp.block_prefix(cfg, n))]
        if not any(k in names for k in own):
            return n, None
        lacking = [k for k in want if k not in names and k not in optional]
        if lacking:
            return n, lacking[0]
        n += 1


def _config_keys(cfg, spec) -> dict:
    """The report keys that come from config.json and the family spec alone (full and index-only alike)."""
    L = cfg.num_hidden_layers
    return {"family": spec.name, "model_type": cfg.model_type, "layers": L, "hidden_size": cfg.hidden_size,
            "vocab_size": cfg.vocab_size, "attention": spec.attention,
            "linear_attention_layers": sum(cfg.layer_type(i) == "linear_attention" for i in range(L)),
            "moe_layers": sum(1 for i in range(L) if spec.moe and cfg.is_moe_layer(i)),
            "routed_experts": cfg.n_routed_experts, "experts_per_token": cfg.num_experts_per_tok,
            "shared_experts": _shared_experts(cfg, spec), "mtp_declared": cfg.num_nextn_predict_layers}


def _shared_experts(cfg, spec) -> int:
    return cfg.n_shared_experts or int(spec.shared_expert == "gated" and cfg.shared_expert_intermediate_size > 0)


def _bytes_per_token(cfg, nbytes: dict[str, int]) -> int:
    """Every dense weight once, the embedding row, k routed experts per MoE layer."""
    expert = dense = 0
    for name, b in nbytes.items():
        if ".mlp.experts." in name:
            expert += b
        elif name == "model.embed_tokens.weight":
            dense += b // cfg.vocab_size
        else:
            dense += b
    routed = expert * cfg.num_experts_per_tok / cfg.n_routed_experts if cfg.n_routed_experts else 0
    return int(dense + routed)


def _scale_bytes(infos, name) -> int:
    s = infos.get(name + "_scale_inv")
    return s.nbytes if s is not None else 0


def _precision(rows) -> tuple[float | None, str | None]:
    """rows: (storage type, stored bytes, elements) of matrices. Bits per weight over all of them, and the type
    that holds most of their elements; (None, None) when there are none."""
    bits, n, by_type = 0, 0, Counter()
    for kind, nbytes, numel in rows:
        bits, n = bits + 8 * nbytes, n + numel
        by_type[kind] += numel
    return (bits / n, by_type.most_common(1)[0][0]) if n else (None, None)


def _st_precision(infos: dict, names):
    """Matrices (>= 2-D) among names whose headers are known; FP8 block scales count with their weight."""
    return _precision((i.dtype, i.nbytes + _scale_bytes(infos, n), _numel(i.shape))
                      for n in names if (i := infos.get(n)) is not None and len(i.shape) >= 2)


def _gguf_precision(tensors: dict, names):
    return _precision((t.tensor_type.name, int(t.n_bytes), int(t.n_elements))
                      for n in names if len((t := tensors[n]).shape) >= 2 and int(t.n_elements))


def _low_precision(bits: dict) -> bool:
    m, t = bits.get("mtp"), bits.get("trunk")
    return m is not None and t is not None and m < _LOW_BITS and m <= _LOW_RATIO * t


def _precision_warning(bits: dict) -> list[str]:
    if not _low_precision(bits):
        return []
    return [f"the MTP tensors are stored at {bits['mtp']:.2f} bits per weight, the trunk at {bits['trunk']:.2f}: "
            f"heads quantised this much harder than the trunk they draft for lose acceptance; use a copy that "
            f"keeps the MTP tensors at the trunk's precision (or at least 8 bits)"]


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _sum_or_none(values):
    total = 0
    for v in values:
        if v is None:
            return None
        total += v
    return total


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _weight_map(index: Path) -> dict:
    try:
        wmap = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise MtpRefError(f"{index}: not a valid safetensors index ({e!r}); it needs a 'weight_map'") from None
    if not isinstance(wmap, dict):
        raise MtpRefError(f"{index}: 'weight_map' is not an object of tensor name -> shard file")
    return wmap


def _starts_with(path: Path, magic: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(len(magic)) == magic


def _import_gguf():
    try:
        import gguf
    except ImportError:
        raise MtpRefError("reading GGUF files needs llama.cpp's 'gguf' package, a dependency of mtp-ref that is "
                          "not installed here: pip install gguf") from None
    return gguf
