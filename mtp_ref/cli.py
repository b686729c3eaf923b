"""python -m mtp_ref {generate, inspect, trace}. Input problems print one line and exit 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

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


def _cuda_backend():
    """CudaModel, or one line saying why this machine cannot run it (numba-cuda missing, no GPU/driver)."""
    try:
        from numba import cuda
    except ImportError:
        raise MtpRefError("--backend cuda needs numba-cuda, which is not installed: pip install -e '.[cuda]' "
                          "on a machine with an NVIDIA GPU, or use --backend numpy") from None
    if not cuda.is_available():  # the simulator (NUMBA_ENABLE_CUDASIM=1) counts as available; CudaModel vets it
        why = " ".join(str(cuda.cuda_error() or "numba finds no CUDA device").split()).rstrip(".")
        raise MtpRefError(f"no NVIDIA GPU found: {why}; use --backend numpy")
    from kernels_cuda.backend import CudaModel
    return CudaModel


def cmd_generate(args) -> int:
    from .model import load_model
    from .speculative import generate
    CudaModel = _cuda_backend() if args.backend == "cuda" else None  # before loading: fail fast
    model = load_model(args.model)
    model.mtp_chain = args.mtp_chain
    if CudaModel is not None and getattr(model, "spec", None) is None:
        raise MtpRefError(f"--backend cuda runs the families of mtp_ref/families.py FAMILIES; the "
                          f"'{model.config.model_type}' engine (its own module) runs on --backend numpy only")
    if CudaModel is not None:
        model = CudaModel(model)
    ids = _prompt_ids(model, args)
    drafter = None
    if args.drafter:  # a separate drafter model (Gemma 4 assistant) instead of the checkpoint's MTP modules
        from .drafters import load_drafter
        drafter = load_drafter(args.drafter, model)
    if CudaModel is not None and drafter is None and args.temperature == 0 and args.rollback == "snapshot":
        # greedy on the GPU: the device loop (token feedback, draft / accept on the device; it falls back to
        # generate itself for what it does not cover: kernels_cuda/loop.py)
        from kernels_cuda.loop import generate_greedy
        res = generate_greedy(model, ids, args.max_new_tokens, args.draft, args.mode)
    else:
        res = generate(model, ids, args.max_new_tokens, args.draft, args.mode, args.temperature, args.top_k,
                       args.top_p, args.seed, rollback=args.rollback, drafter=drafter)
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
    from .inspect_ckpt import format_summary, inspect_path
    s = inspect_path(args.model_dir)
    print(json.dumps(s, indent=1) if args.json else format_summary(s))
    for w in s["warnings"]:
        print(f"WARNING: {w}", file=sys.stderr)
    return 0


def cmd_trace(args) -> int:
    from .model import load_model
    from .trace import write_trace
    out = Path(args.out)
    if not out.parent.is_dir():  # checked before the model loads and runs
        raise MtpRefError(f"--out {out}: the folder {out.parent} does not exist; create it (mkdir -p) or pick another")
    model = load_model(args.model)
    model.mtp_chain = args.mtp_chain
    ids = _prompt_ids(model, args)
    extra = None
    if args.drafter:
        from .drafters import drafter_trace, load_drafter
        if args.draft < 1:
            raise MtpRefError("--drafter needs --draft K >= 1: the number of draft steps to trace")
        extra = drafter_trace(load_drafter(args.drafter, model), ids, args.draft)
    try:
        tr = write_trace(model, ids, out, extra=extra)
    except OSError as e:
        raise MtpRefError(f"--out {out}: cannot write the trace ({e.strerror}); pick a writable file path") from None
    print(f"wrote {args.out}: {len(tr)} tensors, T={len(ids)}, MTP depths={model.config.num_mtp_modules}")
    return 0


_CHAIN_HELP = ("what MTP module j passes to depth j+1: its output after the out norm (transformers, DeepSeek; "
               "default) or the block output before it (vLLM, SGLang, llama.cpp)")


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
    g.add_argument("--drafter", default=None, metavar="DIR",
                   help="a separate drafter checkpoint (gemma4_assistant) that reads the target's KV cache")
    g.add_argument("--rollback", choices=["snapshot", "redecode"], default="snapshot",
                   help="recurrent-state rollback after a rejection: per-token snapshots, or checkpoint + re-decode")
    g.add_argument("--mtp-chain", choices=["post_norm", "pre_norm"], default="post_norm", help=_CHAIN_HELP)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--backend", choices=["numpy", "cuda"], default="numpy")
    g.add_argument("--json", action="store_true")
    g.set_defaults(fn=cmd_generate)
    i = sub.add_parser("inspect", help="what a checkpoint holds: are the MTP heads there?")
    i.add_argument("model_dir", nargs="?", default=None, metavar="PATH",
                   help="checkpoint directory (full, or config.json + index only) or a .gguf file")
    i.add_argument("--json", action="store_true")
    i.set_defaults(fn=cmd_inspect)
    t = sub.add_parser("trace", help="write a golden trace (safetensors) for porters")
    t.add_argument("--model", default=None)
    t.add_argument("--prompt", default=None)
    t.add_argument("--prompt-ids", default=None)
    t.add_argument("--out", required=True)
    t.add_argument("--mtp-chain", choices=["post_norm", "pre_norm"], default="post_norm", help=_CHAIN_HELP)
    t.add_argument("--drafter", default=None, metavar="DIR", help="also trace one round of this drafter (drafter.*)")
    t.add_argument("--draft", type=int, default=0, help="draft steps of the --drafter round")
    t.set_defaults(fn=cmd_trace)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.fn(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the try, not at interpreter exit
        return code
    except MtpRefError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader stopped (`| head`): exit quietly, as CLIs do; stdout goes to /dev/null so that
        # Python's own flush at exit does not raise a second time
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
