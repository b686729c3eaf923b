"""python -m mtp_ref {generate, inspect, trace}. Input problems print one line and exit 2."""

from __future__ import annotations

import argparse
import json
import sys

from .errors import MtpRefError


def _prompt_ids(model, args) -> list[int]:
    if args.prompt_ids:
        try:
            return [int(x) for x in args.prompt_ids.split(",") if x.strip()]
        except ValueError:
            raise MtpRefError(f"--prompt-ids must be comma-separated integers, got '{args.prompt_ids}'") from None
    if args.prompt is None:
        raise MtpRefError("give --prompt TEXT or --prompt-ids 1,2,3")
    return model.encode(args.prompt)


def cmd_generate(args) -> int:
    from .model import load_model
    from .speculative import generate
    model = load_model(args.model)
    if args.backend == "cuda":
        from kernels_cuda.backend import CudaModel  # optional extra: numba-cuda
        model = CudaModel(model)
    ids = _prompt_ids(model, args)
    res = generate(model, ids, args.max_new_tokens, args.draft, args.mode, args.temperature, args.top_k,
                   args.top_p, args.seed, rollback=args.rollback)
    if args.json:
        print(json.dumps({"token_ids": res.token_ids, "text": res.text, "stats": res.stats}))
    else:
        s = res.stats
        print(model.decode(ids) + res.text if model.tokenizer else res.text)
        print(f"\n[{s['generated_tokens']} tokens in {s['seconds']:.2f}s; {s['target_forwards']} target forwards, "
              f"{s['tokens_per_target_forward']:.2f} tokens/forward" +
              (f"; acceptance per depth {', '.join(f'{a:.2f}' for a in s['acceptance_per_depth'])}" if args.draft else "")
              + "]", file=sys.stderr)
    return 0


def cmd_inspect(args) -> int:
    from .inspect_ckpt import format_summary, summarize
    from .model import load_model
    s = summarize(load_model(args.model_dir))
    print(json.dumps(s, indent=1) if args.json else format_summary(s))
    for w in s["warnings"]:
        print(f"WARNING: {w}", file=sys.stderr)
    return 0


def cmd_trace(args) -> int:
    from .model import load_model
    from .trace import write_trace
    model = load_model(args.model)
    ids = _prompt_ids(model, args)
    tr = write_trace(model, ids, args.out)
    print(f"wrote {args.out}: {len(tr)} tensors, T={len(ids)}, MTP depths={model.config.num_mtp_modules}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m mtp_ref", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="generate text, with or without MTP drafting")
    g.add_argument("--model", default=None, help="checkpoint directory (default: the bundled tiny MTP model)")
    g.add_argument("--prompt", default=None)
    g.add_argument("--prompt-ids", default=None, help="comma-separated token ids instead of --prompt")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--draft", type=int, default=0, help="draft depth k (0 = plain decoding)")
    g.add_argument("--mode", choices=["chain", "recursive"], default="chain")
    g.add_argument("--rollback", choices=["snapshot", "redecode"], default="snapshot",
                   help="recurrent-state rollback after a rejection: per-token snapshots, or checkpoint + re-decode")
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--backend", choices=["numpy", "cuda"], default="numpy")
    g.add_argument("--json", action="store_true")
    g.set_defaults(fn=cmd_generate)
    i = sub.add_parser("inspect", help="what a checkpoint holds")
    i.add_argument("model_dir", nargs="?", default=None)
    i.add_argument("--json", action="store_true")
    i.set_defaults(fn=cmd_inspect)
    t = sub.add_parser("trace", help="write a golden trace (safetensors) for porters")
    t.add_argument("--model", default=None)
    t.add_argument("--prompt", default=None)
    t.add_argument("--prompt-ids", default=None)
    t.add_argument("--out", required=True)
    t.set_defaults(fn=cmd_trace)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except MtpRefError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
