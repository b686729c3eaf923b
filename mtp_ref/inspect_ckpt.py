"""`inspect`: what a checkpoint holds, and what decoding one token costs in weight bytes."""

from __future__ import annotations

from collections import Counter

from .families import mtp_tensors, trunk_tensors
from .model import Model


def summarize(model: Model) -> dict:
    cfg, spec, ck = model.config, model.spec, model.ckpt
    trunk = trunk_tensors(cfg, spec)
    n_params = sum(_numel(ck.shape(n)) for n in ck.names() if not n.endswith("_scale_inv"))
    dtypes = Counter(ck.dtype(n) for n in ck.names())
    moe_layers = [i for i in range(cfg.num_hidden_layers) if spec.moe and cfg.is_moe_layer(i)]
    # bytes per decoded token: every dense weight once, the embedding row, k routed experts per MoE layer
    expert_bytes = 0
    dense_bytes = 0
    for name in trunk:
        b = ck.stored_nbytes(name)
        if ".mlp.experts." in name:
            expert_bytes += b
        elif name == "model.embed_tokens.weight":
            dense_bytes += b // cfg.vocab_size
        else:
            dense_bytes += b
    routed_per_token = (expert_bytes * cfg.num_experts_per_tok / cfg.n_routed_experts) if cfg.n_routed_experts else 0
    mtp = []
    for j in range(cfg.num_mtp_modules):
        names = [n for n in mtp_tensors(cfg, spec, j) if n in ck]
        mtp.append({"module": j, "prefix": spec.mtp.module_prefix(cfg, j), "tensors": len(names),
                    "bytes": sum(ck.stored_nbytes(n) for n in names)})
    warnings = []
    if cfg.num_nextn_predict_layers > cfg.num_mtp_modules:
        missing = spec.mtp.module_prefix(cfg, cfg.num_mtp_modules) if spec.mtp else "(no MTP layout for this family)"
        warnings.append(f"config.json declares num_nextn_predict_layers={cfg.num_nextn_predict_layers} but the weights "
                        f"hold {cfg.num_mtp_modules} MTP module(s): tensors under '{missing}*' are missing. "
                        f"Conversions and quantisations often drop them; MTP drafting is impossible with this copy.")
    extra = sorted(set(ck.names()) - set(trunk) - {n for j in range(cfg.num_mtp_modules) for n in mtp_tensors(cfg, spec, j)}
                   - {n for n in ck.names() if n.endswith("_scale_inv")})
    extra = [n for n in extra if not any(n.startswith(m["prefix"]) for m in mtp)]
    return {
        "path": str(model.path),
        "family": spec.name,
        "model_type": cfg.model_type,
        "layers": cfg.num_hidden_layers,
        "hidden_size": cfg.hidden_size,
        "vocab_size": cfg.vocab_size,
        "attention": spec.attention,
        "linear_attention_layers": sum(cfg.layer_type(i) == "linear_attention" for i in range(cfg.num_hidden_layers)),
        "moe_layers": len(moe_layers),
        "routed_experts": cfg.n_routed_experts,
        "experts_per_token": cfg.num_experts_per_tok,
        "shared_experts": cfg.n_shared_experts or int(spec.shared_expert == "gated"
                                                      and cfg.shared_expert_intermediate_size > 0),
        "mtp_declared": cfg.num_nextn_predict_layers,
        "mtp_present": cfg.num_mtp_modules,
        "mtp_modules": mtp,
        "dtypes": dict(dtypes),
        "fp8_block": bool(cfg.quantization_config),
        "parameters": n_params,
        "checkpoint_bytes": sum(i.nbytes for i in ck.infos.values()),
        "bytes_per_token_trunk": int(dense_bytes + routed_per_token),
        "unused_tensors": extra[:20],
        "warnings": warnings,
    }


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def format_summary(s: dict) -> str:
    lines = [f"checkpoint   {s['path']}",
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
        lines.append(f"             module {m['module']}: {m['prefix']}*  {m['tensors']} tensors, {m['bytes'] / 1e6:.2f} MB")
    lines.append(f"dtypes       " + ", ".join(f"{k}: {v} tensors" for k, v in sorted(s["dtypes"].items())))
    lines.append(f"parameters   {s['parameters']:,}" + (" (FP8 block-quantised)" if s["fp8_block"] else ""))
    lines.append(f"file bytes   {s['checkpoint_bytes']:,}")
    lines.append(f"bytes/token  {s['bytes_per_token_trunk']:,} (trunk weights read to decode one token)")
    if s["unused_tensors"]:
        lines.append(f"unused       {len(s['unused_tensors'])} tensors not read by the engine, e.g. {s['unused_tensors'][0]}")
    for w in s["warnings"]:
        lines.append(f"WARNING      {w}")
    return "\n".join(lines)
