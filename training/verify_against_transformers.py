"""Check the training model and a written checkpoint against Hugging Face transformers (CPU, float32).

    python training/verify_against_transformers.py                       # random weights
    python training/verify_against_transformers.py mtp_ref/checkpoints/mtp-tiny

1. Loads model.safetensors (or writes one from a randomly initialised training model with perturbed
   norms / router biases) into transformers' DeepseekV3ForCausalLM via from_pretrained and compares
   the main logits with training/tinymtp_model.py on the same weights.
2. Builds transformers' MtpModel (modeling_layers, 5.23) on that main model, copies the MTP weights
   into it by the released names, and compares each module's logits along the chain
   (module j: rows i = 0..T-1, input token t_{i+j+1}, RoPE position i+j+1).
Needs torch and transformers >= 5.23 (the project's dev extra).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tinymtp_model import TinyMTPModel, load_released, released_state_dict, rope_tables  # noqa: E402


def build_hf(ckpt_dir: Path):
    from transformers import DeepseekV3ForCausalLM
    from transformers.modeling_layers import MtpModel
    from safetensors.torch import load_file

    main = DeepseekV3ForCausalLM.from_pretrained(str(ckpt_dir), dtype=torch.float32, attn_implementation="eager")
    main.eval()
    cfg = json.loads((ckpt_dir / "config.json").read_text())
    L, D, E = cfg["num_hidden_layers"], cfg["num_nextn_predict_layers"], cfg["n_routed_experts"]
    mtp = MtpModel(main, D).float().eval()
    sd = load_file(str(ckpt_dir / "model.safetensors"))
    with torch.no_grad():
        for j in range(D):
            p = f"model.layers.{L + j}"
            lay = mtp.layers[j]
            lay.enorm.weight.copy_(sd[f"{p}.enorm.weight"].float())
            lay.hnorm.weight.copy_(sd[f"{p}.hnorm.weight"].float())
            lay.eh_proj.weight.copy_(sd[f"{p}.eh_proj.weight"].float())
            lay.post_norm.weight.copy_(sd[f"{p}.shared_head.norm.weight"].float())
            blk = lay.mtp_block
            for name, prm in blk.named_parameters():
                if name == "mlp.experts.gate_up_proj":
                    prm.copy_(torch.stack([torch.cat([sd[f"{p}.mlp.experts.{e}.gate_proj.weight"],
                                                      sd[f"{p}.mlp.experts.{e}.up_proj.weight"]]) for e in range(E)]).float())
                elif name == "mlp.experts.down_proj":
                    prm.copy_(torch.stack([sd[f"{p}.mlp.experts.{e}.down_proj.weight"] for e in range(E)]).float())
                else:
                    prm.copy_(sd[f"{p}.{name}"].float())
            blk.mlp.gate.e_score_correction_bias.copy_(sd[f"{p}.mlp.gate.e_score_correction_bias"].float())
            # the MTP module's own copies must equal the main embedding / head (they are tied in MtpModel)
            assert torch.equal(sd[f"{p}.embed_tokens.weight"], sd["model.embed_tokens.weight"])
            assert torch.equal(sd[f"{p}.shared_head.head.weight"], sd["lm_head.weight"])
    return main, mtp, cfg


def hf_chain(main, mtp, ids):
    from transformers.cache_utils import MtpCache
    T = ids.shape[1] - len(mtp.layers) - 1
    with torch.no_grad():
        out = main(ids[:, :T], output_hidden_states=True)
        h = out.hidden_states[-1]  # post model.norm
        res = [out.logits]
        cache = MtpCache(config=mtp.config)
        g = h
        for j in range(len(mtp.layers)):
            pos = torch.arange(T)[None] + j + 1
            g = mtp.forward_layer(j, g, pos, cache, input_ids=ids[:, j + 1:j + 1 + T])
            res.append(mtp._project_to_logits(g))
    return res


def ours_chain(model, ids):
    with torch.no_grad():
        logits, mtp_logits, _, _ = model.forward_all(ids)
    return [logits] + mtp_logits


def main():
    from safetensors.torch import save_file
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_tiny_mtp import MODEL_CONFIG

    tmp = None
    if len(sys.argv) > 1:
        ckpt = Path(sys.argv[1])
        cfg = json.loads((ckpt / "config.json").read_text())
        from safetensors.torch import load_file
        model = load_released(TinyMTPModel(cfg), load_file(str(ckpt / "model.safetensors"))).eval()
    else:
        cfg = dict(MODEL_CONFIG)
        model = TinyMTPModel(cfg)
        model.init_weights(0)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():  # make norms and router biases non-trivial
            for n, p in model.named_parameters():
                if "norm" in n:
                    p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
                if n.endswith("gate.weight"):
                    p.mul_(20)
            for m in model.modules():
                if hasattr(m, "e_score_correction_bias"):
                    m.e_score_correction_bias.copy_(0.05 * torch.randn(m.e_score_correction_bias.shape, generator=g))
        # compare in bf16-rounded weights, as written
        sd = released_state_dict(model)
        load_released(model, sd)
        tmp = tempfile.TemporaryDirectory()
        ckpt = Path(tmp.name)
        save_file(sd, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
        (ckpt / "config.json").write_text(json.dumps(cfg))
        model.eval()

    main_hf, mtp_hf, _ = build_hf(ckpt)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, cfg["vocab_size"], (2, 40), generator=g)
    ref = hf_chain(main_hf, mtp_hf, ids)
    got = ours_chain(model, ids)
    worst = 0.0
    for j, (a, b) in enumerate(zip(ref, got)):
        err = (a - b).abs().max().item()
        scale = a.abs().max().item()
        agree = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
        name = "main" if j == 0 else f"mtp{j}"
        print(f"{name:5s} max|diff| {err:.2e} (max|logit| {scale:.2f})  argmax agreement {agree:.3f}")
        worst = max(worst, err / max(scale, 1e-6))
    print("OK" if worst < 1e-4 else "MISMATCH", f"(worst relative error {worst:.2e})")
    if tmp is not None:
        tmp.cleanup()
    return 0 if worst < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
