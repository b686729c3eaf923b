"""Train the bundled tiny DeepSeek-V3-layout model with 3 chained MTP modules, tokenizer to checkpoint.

    # 1. tokenizer (CPU, ~10 s); written next to the checkpoint
    python training/train_tiny_mtp.py tokenizer --data ../shared/data --out mtp_ref/checkpoints/mtp-tiny
    # 2. model (one CUDA GPU; the numbers below are the ones the bundled checkpoint was trained with)
    python training/train_tiny_mtp.py train --data ../shared/data \
        --tokenizer mtp_ref/checkpoints/mtp-tiny/tokenizer.json --out OUTDIR

Stage 1 trains trunk + MTP modules jointly with the DeepSeek-V3 MTP loss
    L = CE_main + (lambda / D) * sum_j CE_j,   CE_j against the tokens shifted by j + 2.
Stage 2 freezes the trunk (and the shared embedding / output head) and distils the MTP modules on
the model's own greedy continuations of training-text prefixes plus real training windows:
module j at row i is trained towards the main model's next-token distribution at row i + j + 1
(forward KL), which is exactly what greedy chain drafting must reproduce to be accepted.

Everything is seeded; data is only the TRAIN side of the split in tinymtp_data.py.
Outputs (in --out): config.json, generation_config.json, tokenizer.json, model.safetensors,
loss_curves.csv, train_log.txt, heldout_metrics.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tinymtp_data import EOT, load_split  # noqa: E402

# ----------------------------------------------------------------------------- the model
# config.json of the bundled model (keys as in deepseek-ai/DeepSeek-V3's config.json)
MODEL_CONFIG = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "model_type": "deepseek_v3",
    "vocab_size": 4096,
    "hidden_size": 256,
    "intermediate_size": 640,
    "moe_intermediate_size": 64,
    "num_hidden_layers": 10,
    "num_nextn_predict_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "n_shared_experts": 1,
    "n_routed_experts": 4,
    "ep_size": 1,
    "routed_scaling_factor": 2.5,
    "kv_lora_rank": 96,
    "q_lora_rank": 128,
    "qk_rope_head_dim": 16,
    "v_head_dim": 64,
    "qk_nope_head_dim": 48,
    "topk_method": "noaux_tc",
    "n_group": 1,
    "topk_group": 1,
    "num_experts_per_tok": 2,
    "moe_layer_freq": 1,
    "first_k_dense_replace": 1,
    "norm_topk_prob": True,
    "scoring_func": "sigmoid",
    "hidden_act": "silu",
    "max_position_embeddings": 1024,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-6,
    "use_cache": True,
    "tie_word_embeddings": False,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "eos_token_id": 0,
    "torch_dtype": "bfloat16",
}

# training mixture: fraction of the sequences of every batch drawn from each source
MIX = {"gutenberg": 0.62, "python": 0.30, "tinystories_cased": 0.02, "tinystories_lower": 0.06}
# held-out evaluation sets (category -> source)
HELDOUT_SETS = {"stories": "tinystories_cased", "code": "python", "prose": "gutenberg"}


def log(msg, fh=None):
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    if fh is not None:
        fh.write(line + "\n")
        fh.flush()


# ----------------------------------------------------------------------------- data

def tokenize_streams(split, tok, which="train"):
    """{source: int32 array} = for each doc: ids(doc) + [eos], with a leading eos (= bos)."""
    eos = tok.token_to_id(EOT)
    out = {}
    for name in MIX:
        docs = split[name][which]
        enc = tok.encode_batch(docs, add_special_tokens=False)
        total = 1 + sum(len(e.ids) + 1 for e in enc)
        arr = np.empty(total, dtype=np.int32)
        arr[0] = eos
        pos = 1
        for e in enc:
            n = len(e.ids)
            arr[pos:pos + n] = e.ids
            arr[pos + n] = eos
            pos += n + 1
        out[name] = arr
    return out


class Sampler:
    """Random windows of a fixed length from the per-source token streams (on the GPU)."""

    def __init__(self, streams, mix, device, seed):
        import torch
        self.torch = torch
        self.streams = {k: torch.from_numpy(v).to(device) for k, v in streams.items()}
        self.mix = mix
        self.g = torch.Generator(device=device).manual_seed(seed)
        self.device = device

    def counts(self, batch):
        names = list(self.mix)
        c = [int(round(batch * self.mix[n])) for n in names]
        c[0] += batch - sum(c)
        return dict(zip(names, c))

    def batch(self, batch, length):
        torch = self.torch
        parts = []
        for name, n in self.counts(batch).items():
            if n == 0:
                continue
            s = self.streams[name]
            starts = torch.randint(0, len(s) - length, (n,), generator=self.g, device=self.device)
            parts.append(s[starts[:, None] + torch.arange(length, device=self.device)[None, :]])
        return torch.cat(parts).long()


# ----------------------------------------------------------------------------- helpers

def lr_at(step, total, peak, warmup, floor=0.1):
    if step < warmup:
        return peak * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def param_groups(params, wd):
    decay = [p for n, p in params if p.ndim >= 2]
    no_decay = [p for n, p in params if p.ndim < 2]
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def ce(logits, targets):
    import torch.nn.functional as F
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def mtp_losses(model, window, lam):
    """The DeepSeek-V3 MTP objective on a window [B, T + D + 1]."""
    D = len(model.mtp)
    T = window.shape[1] - D - 1
    logits, mtp_logits, _, loads = model.forward_all(window)
    l_main = ce(logits, window[:, 1:T + 1])
    l_mtp = [ce(lg, window[:, j + 2:j + 2 + T]) for j, lg in enumerate(mtp_logits)]
    loss = l_main + (lam / D) * sum(l_mtp)
    return loss, l_main, l_mtp, loads


def distill_losses(model, window, kl_weight=1.0, ce_weight=0.0):
    """Trunk frozen: module j at row i learns the main model's prediction at row i + j + 1:
    kl_weight * KL(main distribution || module distribution) + ce_weight * CE(main model's argmax).
    (The bundled model used the KL term alone; the argmax term targets greedy acceptance directly.)"""
    import torch
    import torch.nn.functional as F
    from tinymtp_model import rope_tables
    D = len(model.mtp)
    T = window.shape[1] - D - 1
    cos, sin = rope_tables(model.cfg, T + D + 1, window.device)
    with torch.no_grad():
        h, _ = model.trunk(window[:, :T], cos[:T], sin[:T])
        teacher = F.log_softmax(model.lm_head(h).float(), dim=-1)  # row r predicts window[r + 1]
    losses, agree, loads = [], [], []
    g = h
    for j in range(D):
        g, load = model.mtp_step(j, g, window[:, j + 1:j + 1 + T], cos[j + 1:j + 1 + T], sin[j + 1:j + 1 + T])
        loads.append(load)
        n = T - j - 1  # rows i with a teacher row i + j + 1 inside the window
        s = F.log_softmax(model.mtp_head(j, g[:, :n]).float(), dim=-1)
        t = teacher[:, j + 1:j + 1 + n]
        loss_j = kl_weight * F.kl_div(s, t, log_target=True, reduction="none").sum(-1).mean()
        if ce_weight:
            loss_j = loss_j + ce_weight * F.nll_loss(s.reshape(-1, s.shape[-1]), t.argmax(-1).reshape(-1))
        losses.append(loss_j)
        agree.append((s.argmax(-1) == t.argmax(-1)).float().mean())
    return losses, agree, loads


def heldout_eval(model, windows, device):
    """Teacher-forced metrics on held-out windows: main CE, CE per depth, and draft agreement per
    depth (module j's argmax equals the main model's argmax at row i + j + 1)."""
    import torch
    D = len(model.mtp)
    T = windows.shape[1] - D - 1
    out = {}
    with torch.no_grad(), torch.autocast(windows.device.type, dtype=torch.bfloat16):
        logits, mtp_logits, _, _ = model.forward_all(windows)
        out["loss_main"] = ce(logits, windows[:, 1:T + 1]).item()
        main_arg = logits.argmax(-1)
        for j, lg in enumerate(mtp_logits):
            out[f"loss_mtp{j + 1}"] = ce(lg, windows[:, j + 2:j + 2 + T]).item()
            n = T - j - 1
            out[f"agree_mtp{j + 1}"] = (lg[:, :n].argmax(-1) == main_arg[:, j + 1:j + 1 + n]).float().mean().item()
    return out


def greedy_chain_acceptance(model, prompts, n_new):
    """Greedy-decode n_new tokens from each prompt with the trunk, then measure, teacher-forced on
    that greedy text, the chain-drafting acceptance: for each depth j, the fraction of rows where
    drafts 1..j all equal the greedy tokens, divided by the fraction where drafts 1..j-1 do."""
    import torch
    from tinymtp_model import rope_tables
    with torch.no_grad(), torch.autocast(prompts.device.type, dtype=torch.bfloat16):
        P = prompts.shape[1]
        seq = model.greedy_continue(prompts, n_new)
        D = len(model.mtp)
        T = seq.shape[1] - D - 1
        cos, sin = rope_tables(model.cfg, T + D + 1, seq.device)
        h, _ = model.trunk(seq[:, :T], cos[:T], sin[:T])
        g = h
        ok = torch.ones(seq.shape[0], T, dtype=torch.bool, device=seq.device)
        rows = slice(P - 1, T - D)  # rows whose drafted tokens all lie in the greedy part
        res = {}
        prev = ok[:, rows].float().mean()
        for j in range(D):
            g, _ = model.mtp_step(j, g, seq[:, j + 1:j + 1 + T], cos[j + 1:j + 1 + T], sin[j + 1:j + 1 + T])
            draft = model.mtp_head(j, g).argmax(-1)
            ok = ok & (draft == seq[:, j + 2:j + 2 + T])
            cur = ok[:, rows].float().mean()
            res[f"accept_depth{j + 1}"] = (cur / prev).item() if prev > 0 else 0.0
            prev = cur
        acc = [res[f"accept_depth{j + 1}"] for j in range(D)]
        tpf, p = 1.0, 1.0
        for a in acc:
            p *= a
            tpf += p
        res["tokens_per_forward_k3_estimate"] = tpf
    return res, seq


# ----------------------------------------------------------------------------- checkpoint

def write_checkpoint(model, tok_path, out: Path):
    import torch
    from safetensors.torch import save_file
    from tinymtp_model import released_state_dict
    out.mkdir(parents=True, exist_ok=True)
    sd = released_state_dict(model)
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = dict(MODEL_CONFIG)
    cfg["transformers_version"] = "5.23.0"
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    gen = {"_from_model_config": True, "bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"],
           "do_sample": False, "transformers_version": "5.23.0"}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    if Path(tok_path).resolve() != (out / "tokenizer.json").resolve():
        shutil.copy(tok_path, out / "tokenizer.json")
    n_params = sum(t.numel() for t in sd.values())
    return n_params, (out / "model.safetensors").stat().st_size


# ----------------------------------------------------------------------------- main

def cmd_tokenizer(args):
    from tinymtp_tokenizer import train_tokenizer
    split = load_split(args.data)
    out = Path(args.out) / "tokenizer.json"
    tok = train_tokenizer(split, out)
    print(f"wrote {out} (vocabulary {tok.get_vocab_size()})")


def cmd_token_cache(args):
    """The tokenized train/held-out streams in one .npz (what a GPU machine without the corpora needs)."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(args.tokenizer)
    assert tok.get_vocab_size() <= 65536
    split = load_split(args.data)
    arrays = {}
    for which, key in (("train", "train_"), ("heldout", "held_")):
        for name, v in tokenize_streams(split, tok, which).items():
            if which == "train" and args.max_train_tokens:
                v = v[: args.max_train_tokens]
            arrays[key + name] = v.astype(np.uint16)
    np.savez(args.out, **arrays)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {len(v):,}" for k, v in arrays.items()))


def cmd_train(args):
    import torch
    from tokenizers import Tokenizer
    from tinymtp_model import TinyMTPModel

    t_start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    flog = open(out / "train_log.txt", "w")
    log(f"args: {vars(args)}", flog)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    device = args.device
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    # ---- data
    cache = Path(args.token_cache) if args.token_cache else None
    have_cache = cache is not None and cache.exists()
    split = None if have_cache and args.tokenizer else load_split(args.data)
    if args.tokenizer and Path(args.tokenizer).exists():
        tok = Tokenizer.from_file(args.tokenizer)
        tok_path = args.tokenizer
    else:
        from tinymtp_tokenizer import train_tokenizer
        tok_path = str(out / "tokenizer.json")
        tok = train_tokenizer(split, tok_path)
    assert tok.get_vocab_size() == MODEL_CONFIG["vocab_size"]
    if have_cache:  # ids may be stored as uint16 (cmd_token_cache); the samplers index with int32
        z = np.load(cache, allow_pickle=False)
        train_streams = {k[6:]: z[k].astype(np.int32) for k in z.files if k.startswith("train_")}
        held_streams = {k[5:]: z[k].astype(np.int32) for k in z.files if k.startswith("held_")}
    else:
        train_streams = tokenize_streams(split, tok, "train")
        held_streams = tokenize_streams(split, tok, "heldout")
        if cache is not None:
            np.savez(cache, **{f"train_{k}": v for k, v in train_streams.items()},
                     **{f"held_{k}": v for k, v in held_streams.items()})
    for k, v in train_streams.items():
        log(f"train tokens {k}: {len(v):,}   heldout {len(held_streams[k]):,}", flog)
    log(f"data ready after {time.time() - t_start:.1f} s", flog)

    cfg = dict(MODEL_CONFIG)
    D = cfg["num_nextn_predict_layers"]
    model = TinyMTPModel(cfg)
    model.init_weights(args.seed)
    if args.init:  # continue from a written checkpoint (e.g. the bundled one): stage 2 only, trunk unchanged
        from safetensors.torch import load_file
        from tinymtp_model import load_released
        load_released(model, load_file(str(Path(args.init) / "model.safetensors")))
        log(f"initialised from {args.init}", flog)
    model.to(device)
    if args.untie_mtp_heads and model.mtp_heads is None:
        model.untie_mtp_heads()
    n_par = sum(p.numel() for p in model.parameters())
    log(f"model parameters (tied embed/head, as trained): {n_par:,}", flog)

    sampler = Sampler(train_streams, MIX, device, args.seed)
    # fixed held-out windows per category (deterministic)
    hg = torch.Generator(device="cpu").manual_seed(args.seed + 1)
    held_windows = {}
    for cat, src in HELDOUT_SETS.items():
        s = torch.from_numpy(held_streams[src])
        L = min(args.eval_len, len(s) - 2) - D - 1
        starts = torch.randint(0, len(s) - (L + D + 1), (args.eval_batch,), generator=hg)
        held_windows[cat] = s[starts[:, None] + torch.arange(L + D + 1)[None]].long().to(device)

    csv_f = open(out / "loss_curves.csv", "w", newline="")
    cw = csv.writer(csv_f)
    cw.writerow(["stage", "step", "tokens", "seconds", "lr", "split", "loss_main"]
                + [f"loss_mtp{j + 1}" for j in range(D)] + [f"agree_mtp{j + 1}" for j in range(D)])

    def write_eval(stage, step, tokens, lr):
        model.eval()
        saved, model.use_compiled = model.use_compiled, False  # eager: other shapes, no grad
        res = {}
        for cat, w in held_windows.items():
            r = heldout_eval(model, w, device)
            res[cat] = r
            cw.writerow([stage, step, tokens, f"{time.time() - t_start:.1f}", f"{lr:.3e}", f"heldout_{cat}",
                         f"{r['loss_main']:.4f}"] + [f"{r[f'loss_mtp{j + 1}']:.4f}" for j in range(D)]
                        + [f"{r[f'agree_mtp{j + 1}']:.4f}" for j in range(D)])
        csv_f.flush()
        log(f"  heldout @{stage}:{step}: " + "  ".join(
            f"{c} main {r['loss_main']:.3f} mtp " + "/".join(f"{r[f'loss_mtp{j + 1}']:.2f}" for j in range(D))
            + " agree " + "/".join(f"{r[f'agree_mtp{j + 1}']:.2f}" for j in range(D)) for c, r in res.items()), flog)
        model.use_compiled = saved
        model.train()
        return res

    # ---- stage 1: joint training
    if args.compile:  # regional compilation: one graph for the dense block, one for all MoE blocks
        torch._dynamo.config.cache_size_limit = 64
        for blk in list(model.layers) + [m.block for m in model.mtp]:
            blk.compile()
        model.use_compiled = True
    opt = torch.optim.AdamW(param_groups(list(model.named_parameters()), args.wd), lr=args.lr,
                            betas=(0.9, 0.95), eps=1e-8, fused=True)
    T1 = args.seq_len
    tokens = 0
    t_loop = time.time()
    model.train()
    step = 0
    while step < args.steps:
        if time.time() - t_start > args.stage1_deadline:
            log(f"stage 1 stopped by --stage1-deadline at step {step} (learning rate not fully decayed)", flog)
            break
        lr = lr_at(step, args.steps, args.lr, args.warmup)
        for gparam in opt.param_groups:
            gparam["lr"] = lr
        window = sampler.batch(args.batch, T1 + D + 1)
        try:
            with torch.autocast(device, dtype=torch.bfloat16):
                loss, l_main, l_mtp, loads = mtp_losses(model, window, args.mtp_lambda)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        except Exception as exc:  # torch.compile trouble: fall back to eager once
            if not model.use_compiled:
                raise
            log(f"compiled step failed ({type(exc).__name__}: {exc}); continuing eagerly", flog)
            model.use_compiled = False
            opt.zero_grad(set_to_none=True)
            continue
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        model.update_router_bias(loads, args.bias_gamma)
        tokens += window.shape[0] * T1
        step += 1
        if step == 1:
            if device == "cuda":
                torch.cuda.synchronize()
            log(f"first step done after {time.time() - t_loop:.1f} s (includes compilation)", flog)
            t_loop = time.time()
            tokens_at_loop = tokens
        if step % args.log_every == 0 or step == args.steps:
            lm = l_main.item()
            lms = [x.item() for x in l_mtp]
            el = time.time() - t_loop
            tps = (tokens - tokens_at_loop) / max(el, 1e-9)
            cw.writerow(["pretrain", step, tokens, f"{time.time() - t_start:.1f}", f"{lr:.3e}", "train",
                         f"{lm:.4f}"] + [f"{x:.4f}" for x in lms] + [""] * D)
            csv_f.flush()
            log(f"step {step}/{args.steps} lr {lr:.2e} loss {loss.item():.3f} main {lm:.3f} mtp "
                + "/".join(f"{x:.3f}" for x in lms) + f" gnorm {gn.item():.2f} tok/s {tps:,.0f}", flog)
        if step % args.eval_every == 0 or step == args.steps:
            write_eval("pretrain", step, tokens, lr)
    log(f"stage 1 done: {tokens:,} tokens in {time.time() - t_loop:.1f} s (after the first step)", flog)
    model.use_compiled = False  # eager from here (other shapes, frozen trunk)

    # ---- stage 2: distil the MTP modules on the model's own greedy continuations
    if args.distill_steps > 0:
        t2 = time.time()
        model.eval()
        gens = []
        mix2 = json.loads(args.distill_mix) if args.distill_mix else MIX
        log(f"stage 2 mix (prompts and real windows): {mix2}", flog)
        gen_sampler = Sampler(train_streams, mix2, device, args.seed + 7)
        sampler2 = Sampler(train_streams, mix2, device, args.seed + 13) if args.distill_mix else sampler
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
            for b in range(args.gen_batches):
                P = min([32, 64, 128][b % 3], args.distill_len // 2)
                prompts = gen_sampler.batch(args.gen_batch, P)
                seq = model.greedy_continue(prompts, args.distill_len - P)
                gens.append(seq)
        gens = torch.cat(gens)
        log(f"stage 2: generated {gens.shape[0]} greedy continuations of length {gens.shape[1]} "
            f"in {time.time() - t2:.1f} s", flog)
        for p in model.parameters():
            p.requires_grad_(False)
        mtp_params = [(n, p) for n, p in model.named_parameters() if n.startswith(("mtp.", "mtp_heads."))]
        for _, p in mtp_params:
            p.requires_grad_(True)
        opt2 = torch.optim.AdamW(param_groups(mtp_params, args.wd), lr=args.distill_lr, betas=(0.9, 0.95),
                                 fused=True)
        g2 = torch.Generator(device=device).manual_seed(args.seed + 11)
        model.train()
        half = args.distill_batch // 2
        for step2 in range(args.distill_steps):
            if time.time() - t_start > args.distill_deadline:
                log(f"stage 2 stopped by --distill-deadline at step {step2}", flog)
                break
            lr = lr_at(step2, args.distill_steps, args.distill_lr, args.distill_warmup)
            for gparam in opt2.param_groups:
                gparam["lr"] = lr
            idx = torch.randint(0, gens.shape[0], (args.distill_batch - half,), generator=g2, device=device)
            window = torch.cat([gens[idx], sampler2.batch(half, args.distill_len)])
            with torch.autocast(device, dtype=torch.bfloat16):
                losses, agree, loads = distill_losses(model, window, args.distill_kl, args.distill_ce)
                loss = sum(losses)
            opt2.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in mtp_params], args.clip)
            opt2.step()
            with torch.no_grad():  # balance only the MTP blocks' routers here
                for m, load in zip(model.mtp, loads):
                    m.block.mlp.gate.e_score_correction_bias += args.bias_gamma * torch.sign(load.mean() - load)
            s2 = step2 + 1
            if s2 % args.log_every == 0 or s2 == args.distill_steps:
                kl = [x.item() for x in losses]
                ag = [x.item() for x in agree]
                cw.writerow([args.distill_name, s2, s2 * window.shape[0] * window.shape[1], f"{time.time() - t_start:.1f}",
                             f"{lr:.3e}", "train_kl" if not args.distill_ce else "train_distill_loss", ""]
                            + [f"{x:.4f}" for x in kl] + [f"{x:.4f}" for x in ag])
                csv_f.flush()
                log(f"distill {s2}/{args.distill_steps} {'kl' if not args.distill_ce else 'loss'} " + "/".join(f"{x:.3f}" for x in kl)
                    + " agree " + "/".join(f"{x:.3f}" for x in ag), flog)
            if s2 % args.eval_every == 0 or s2 == args.distill_steps:
                write_eval(args.distill_name, s2, tokens, lr)
        log(f"stage 2 done in {time.time() - t2:.1f} s", flog)

    # ---- held-out greedy chain acceptance (teacher-forced on the trunk's own greedy text)
    model.eval()
    metrics = {"final_heldout": {}, "greedy_chain": {}}
    for cat, w in held_windows.items():
        metrics["final_heldout"][cat] = heldout_eval(model, w, device)
        r, seq = greedy_chain_acceptance(model, w[:32, :48], 128)
        metrics["greedy_chain"][cat] = r
        log(f"greedy chain acceptance on held-out {cat}: " + json.dumps({k: round(v, 3) for k, v in r.items()}), flog)
        log(f"  sample ({cat}): {tok.decode(seq[0].tolist())!r}", flog)
    metrics["train_tokens_stage1"] = tokens
    metrics["seconds_total"] = time.time() - t_start
    (out / "heldout_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

    n_params, size = write_checkpoint(model, tok_path, out)
    log(f"wrote {out / 'model.safetensors'}: {n_params:,} parameters, {size:,} bytes; "
        f"total {time.time() - t_start:.1f} s", flog)
    csv_f.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("tokenizer")
    a.add_argument("--data", required=True)
    a.add_argument("--out", required=True)
    t = sub.add_parser("train")
    t.add_argument("--data", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--tokenizer", default=None, help="existing tokenizer.json (else one is trained)")
    t.add_argument("--token-cache", default=None, help="npz to reuse the tokenized corpus between runs")
    t.add_argument("--seed", type=int, default=1234)
    t.add_argument("--device", default="cuda")
    t.add_argument("--steps", type=int, default=2400)
    t.add_argument("--batch", type=int, default=128)
    t.add_argument("--seq-len", type=int, default=1024)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--warmup", type=int, default=150)
    t.add_argument("--wd", type=float, default=0.1)
    t.add_argument("--clip", type=float, default=1.0)
    t.add_argument("--mtp-lambda", type=float, default=0.5)
    t.add_argument("--bias-gamma", type=float, default=1e-3)
    t.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    t.add_argument("--log-every", type=int, default=25)
    t.add_argument("--eval-every", type=int, default=200)
    t.add_argument("--eval-batch", type=int, default=32)
    t.add_argument("--eval-len", type=int, default=512)
    t.add_argument("--distill-steps", type=int, default=700)
    t.add_argument("--distill-batch", type=int, default=256)
    t.add_argument("--distill-len", type=int, default=256)
    t.add_argument("--distill-lr", type=float, default=1e-3)
    t.add_argument("--distill-kl", type=float, default=1.0, help="weight of KL to the main model's distribution")
    t.add_argument("--distill-ce", type=float, default=0.0, help="weight of CE against the main model's argmax")
    t.add_argument("--distill-warmup", type=int, default=30)
    t.add_argument("--gen-batches", type=int, default=8)
    t.add_argument("--gen-batch", type=int, default=2048)
    t.add_argument("--stage1-deadline", type=float, default=420.0,
                   help="safety: seconds after start at which stage 1 stops even if --steps is not reached")
    t.add_argument("--distill-deadline", type=float, default=530.0,
                   help="safety: seconds after start at which stage 2 stops")
    t.add_argument("--init", default=None, help="checkpoint dir to start from (use with --steps 0: distil only)")
    t.add_argument("--untie-mtp-heads", action="store_true", help="train a separate shared_head.head per module")
    t.add_argument("--distill-mix", default=None, help='JSON source -> share for stage 2 (default: the stage-1 mix)')
    t.add_argument("--distill-name", default="distill", help="stage label in loss_curves.csv")
    c = sub.add_parser("token-cache", help="tokenize the corpora once into an .npz for --token-cache (uint16 ids)")
    c.add_argument("--data", required=True)
    c.add_argument("--tokenizer", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--max-train-tokens", type=int, default=0, help="keep the first N train tokens per source (0: all)")
    args = ap.parse_args()
    if args.cmd == "tokenizer":
        cmd_tokenizer(args)
    elif args.cmd == "token-cache":
        cmd_token_cache(args)
    else:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
        cmd_train(args)


if __name__ == "__main__":
    main()
