"""A second, independent oracle: llama.cpp's own MTP drafting against ours, on tiny random checkpoints.

    .venv/bin/python benchmarks/crosscheck_llamacpp.py build [--work DIR]
    .venv/bin/python benchmarks/crosscheck_llamacpp.py run --variants qwen3_5-vl,qwen3_next [--tokens 200] [--k 3]

build: downloads the llama-cpp-python==0.3.36 sdist (it vendors llama.cpp; the commit is read from the sdist's
git metadata), builds the llama library and the common library CPU-only (nice -n 19, -j2), and the small driver
benchmarks/crosscheck_llamacpp_driver.cpp against them (greedy plain decoding, and llama.cpp's draft-mtp drafter
driven as its examples/speculative-simple drives it, printing every round as JSON).

run: for each variant, writes the tiny random checkpoint of tests/builders_qwen35.py, converts it with llama.cpp's
convert_hf_to_gguf.py (--outtype f32; the bf16 weights convert exactly; the tiny tokenizer's pre-tokenizer is
named "gpt-2" by a wrapper, since the converter only knows released tokenizers by hash), and compares, on
random prompts of token ids:
  * the greedy plain token streams (ours generate(k=0) vs llama.cpp one token per forward);
  * llama.cpp's MTP-drafted stream against both;
  * every llama.cpp draft round: its k drafts against ours for the same committed context, computed with our
    engine's trunk and MTP forward in two conventions: ours (MTP rows at positions 1..N-1, as transformers'
    MtpModel) and llama.cpp's (also a position-0 row pairing the first token with a zero hidden, which its
    drafter adds because it pairs each batch's first token with a pending hidden that starts at zero);
  * the accepted length per round (llama.cpp's, and ours from our draft against our plain stream);
  * our own SpeculativeDecoder (recursive mode, k drafts) rounds at the positions where llama.cpp also drafted.
For Qwen3-Next llama.cpp restores a checkpoint after a rejection and one MTP row then carries a stale hidden;
compare() reproduces that row too. A variant "NAME+steeredSIGMA" (e.g. qwen3_5-vl+steered0.03) is steered so that
drafts get accepted (see steer()). Prints a line per prompt and writes JSON (--out). Needs cmake, g++, pip with
network access for the sdist; torch and transformers (the test oracles) for the checkpoint builders. Not part of
the test suite: the build took about 35 minutes on the shared 2-core VM. Results: docs/crosscheck.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SDIST = "llama-cpp-python==0.3.36"
DRIVER = Path(__file__).with_name("crosscheck_llamacpp_driver.cpp")
TARGET = "llama-mtp-xcheck"


def sh(cmd, **kw):
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def llama_dir(work: Path) -> Path:
    return work / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp"


def llama_commit(work: Path) -> str:
    head = work / "llama_cpp_python-0.3.36" / ".git" / "modules" / "vendor" / "llama.cpp" / "HEAD"
    return head.read_text().strip() if head.exists() else "unknown"


def build(work: Path, jobs: int) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    tgz = work / "llama_cpp_python-0.3.36.tar.gz"
    if not tgz.exists():
        sh([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SDIST, "-d", work])
    src = llama_dir(work)
    if not src.exists():
        with tarfile.open(tgz) as t:
            t.extractall(work, filter="tar")
    # the driver goes in as one more example directory, so it builds with llama.cpp's own flags
    ex = src / "examples" / "mtp-xcheck"
    ex.mkdir(exist_ok=True)
    shutil.copy(DRIVER, ex / "driver.cpp")
    (ex / "CMakeLists.txt").write_text(
        f"add_executable({TARGET} driver.cpp)\n"
        f"target_link_libraries({TARGET} PRIVATE llama-common llama ${{CMAKE_THREAD_LIBS_INIT}})\n"
        f"target_compile_features({TARGET} PRIVATE cxx_std_17)\n")
    lists = src / "examples" / "CMakeLists.txt"
    if "mtp-xcheck" not in lists.read_text():
        lists.write_text(lists.read_text() + "\nadd_subdirectory(mtp-xcheck)\n")
    bdir = work / "build"
    nice = ["nice", "-n", "19"]
    sh(nice + ["cmake", "-S", src, "-B", bdir, "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON",
               "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_OPENSSL=OFF",
               "-DGGML_CUDA=OFF", "-DGGML_METAL=OFF", "-DGGML_VULKAN=OFF"])
    sh(nice + ["cmake", "--build", bdir, f"-j{jobs}", "--target", TARGET])
    exe = bdir / "bin" / TARGET
    print(f"built {exe} (llama.cpp {llama_commit(work)})")
    return exe


# --------------------------------------------------------------------------------------------------
# Checkpoints and conversion
# --------------------------------------------------------------------------------------------------

CONVERT_WRAPPER = r"""
import sys
sys.path.insert(0, sys.argv[1])
sys.argv = ["convert_hf_to_gguf.py"] + sys.argv[2:]
import convert_hf_to_gguf as convert
from conversion.base import TextModel
# the converter identifies a BPE pre-tokenizer by hashing released tokenizers' output; the tests' tiny byte-level
# BPE uses the GPT-2 split, so name it
TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
convert.main()
"""


def steer(ckpt: Path, sigma: float, seed: int = 0) -> None:
    """Make drafts acceptable (random MTP drafts are all rejected, leaving acceptance untested): zero every output
    projection of the trunk and the MTP block (o_proj, out_proj, down_proj), so the residual stream is the token
    embedding and the greedy next token a fixed function f(t) = argmax head(norm(E t)); set the zero-centred norms
    around it to scale 1 and the MTP's fc to [I + sigma R1 | sigma R2]: the MTP then predicts about f of its input
    token, which is the next token, and sigma sets how often it misses."""
    import torch
    from safetensors.torch import load_file, save_file

    gen = torch.Generator().manual_seed(seed)
    for f in sorted(ckpt.glob("*.safetensors")):
        t = load_file(str(f))
        for name in list(t):
            if name.endswith(("o_proj.weight", "out_proj.weight", "down_proj.weight", "down_proj")):
                t[name] = torch.zeros_like(t[name])
            elif name.endswith(("model.norm.weight", "mtp.pre_fc_norm_embedding.weight", "mtp.norm.weight")):
                t[name] = torch.zeros_like(t[name])
            elif name == "mtp.fc.weight":
                H = t[name].shape[0]
                w = sigma * torch.randn(H, 2 * H, generator=gen)
                w[:, :H] += torch.eye(H)
                t[name] = w.to(t[name].dtype)
        save_file(t, str(f), metadata={"format": "pt"})


def make_checkpoint(variant: str, work: Path):
    sys.path.insert(0, str(ROOT / "tests"))
    import builders_qwen35 as bq

    name = variant
    variant, steered, sigma = variant.partition("+steered")          # "qwen3_5-vl+steered0.3": sigma 0.3
    if variant not in bq.VARIANTS:
        raise SystemExit(f"error: unknown variant {variant!r}; builders_qwen35.VARIANTS has {sorted(bq.VARIANTS)}")
    d = work / "ckpt" / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    # llama.cpp's Gated DeltaNet takes one head size for keys and values (ssm_state_size); the tests' tiny
    # configs use 16 / 24 to catch a swapped dimension, so the cross-check builds them with 16 / 16. Its qwen3next
    # has no dense layers between MoE ones (mlp_only_layers, [] in the release; the tests use [1])
    over = {"linear_value_head_dim": 16}
    if bq.VARIANTS[variant]["family"] == "qwen3_next":
        over["mlp_only_layers"] = []
    bq.build(variant, d, text_overrides=over)
    if steered:
        steer(d, float(sigma or 0.3))
    return d


def convert(ckpt: Path, work: Path) -> Path:
    out = ckpt.with_suffix(".f32.gguf")
    with open(ckpt.with_suffix(".convert.log"), "w") as log:
        sh([sys.executable, "-c", CONVERT_WRAPPER, llama_dir(work), ckpt, "--outtype", "f32", "--outfile", out],
           stdout=log, stderr=subprocess.STDOUT)
    return out


# --------------------------------------------------------------------------------------------------
# llama.cpp runs
# --------------------------------------------------------------------------------------------------


def run_llama(exe: Path, gguf: Path, prompt: list[int], n: int, k: int) -> dict:
    env = dict(os.environ, XC_PROMPT_IDS=",".join(map(str, prompt)), XC_MODE="mtp" if k else "plain")
    cmd = [exe, "-m", gguf, "-n", n, "-c", 1024, "-b", 1024, "-ub", 1024, "-t", 1, "--temp", 0, "--top-k", 1,
           "--seed", 1, "-lv", 0]
    if k:
        cmd += ["--spec-type", "draft-mtp", "--spec-draft-n-max", k]
    r = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"llama.cpp driver failed ({r.returncode}):\n{r.stderr[-3000:]}")
    res = {"rounds": []}
    for line in r.stdout.splitlines():
        if not line.startswith("{"):
            continue
        obj = json.loads(line)
        if "round" in obj:
            res["rounds"].append(obj["round"])
        else:
            res.update(obj)
    return res


# --------------------------------------------------------------------------------------------------
# Our side
# --------------------------------------------------------------------------------------------------


def our_verify_argmax(model, committed: list[int], id_last: int, drafts: list[int]) -> list[int]:
    """Target argmax of every row of the verify [id_last, d_1 .. d_k] after `committed`."""
    _, logits = model.forward(np.asarray(committed + [id_last] + drafts), model.new_cache())
    return [int(x) for x in np.argmax(logits[len(committed):], axis=-1)]


def our_draft(model, committed: list[int], id_last: int, k: int, position0_row: bool,
              stale: dict | None = None) -> list[int]:
    """Recursive drafting with module 0 after `committed` (in the trunk) with `id_last` pending: MTP rows
    (h[p-1], t[p]) at positions 1..N, the last one being id_last's; then k-1 rows of (g, d). With
    position0_row, first a row (0, t[0]) at position 0, as llama.cpp's drafter has. stale: {p: hidden} to
    pair with t[p] instead of h[p-1] (llama.cpp's rows written right after a checkpoint restore, see compare)."""
    N = len(committed)
    h, _ = model.forward(np.asarray(committed), model.new_cache())               # [N, H]
    c = model.new_mtp_cache()
    if position0_row:
        model.mtp_forward(0, [committed[0]], np.zeros_like(h[:1]), c, np.array([0]))
    seq = committed + [id_last]
    prev_h = h.copy()
    for p, hid in (stale or {}).items():
        if 1 <= p <= N:
            prev_h[p - 1] = hid
    g, logits = model.mtp_forward(0, seq[1:], prev_h, c, np.arange(1, N + 1), last_only=True)
    drafts = [int(np.argmax(logits[-1]))]
    prev = g[-1:]
    for s in range(1, k):
        prev, logits = model.mtp_forward(0, [drafts[-1]], prev, c, np.array([N + s]))
        drafts.append(int(np.argmax(logits[-1])))
    return drafts


def our_draft_chain_heads(model, committed: list[int], id_last: int, k: int) -> list[int]:
    """llama.cpp's multi-module path (chain_heads, Step-3.5 style), with our forward: every module's cache holds
    the trunk-paired rows (0, t[0]) at position 0 and (h[p-1], t[p]) at 1..N-1; draft step i runs module i over
    [id_last, d_1 .. d_i] at positions N .. N+i with hiddens [h[N-1], out_0, .., out_{i-1}] (out_j: module j's
    output at its last row), and d_{i+1} is the argmax of its last row."""
    N = len(committed)
    h, _ = model.forward(np.asarray(committed), model.new_cache())               # [N, H]
    chain_h, drafts = [h[-1]], []
    for i in range(min(k, model.config.num_mtp_modules)):
        c = model.new_mtp_cache()
        model.mtp_forward(i, [committed[0]], np.zeros_like(h[:1]), c, np.array([0]))
        if N > 1:
            model.mtp_forward(i, committed[1:], h[:-1], c, np.arange(1, N))
        g, logits = model.mtp_forward(i, [id_last] + drafts, np.stack(chain_h), c, np.arange(N, N + i + 1),
                                      last_only=True)
        drafts.append(int(np.argmax(logits[-1])))
        chain_h.append(g[-1])
    return drafts


def agree_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def compare(model, exe: Path, gguf: Path, prompt: list[int], n: int, k: int) -> dict:
    from mtp_ref import SpeculativeDecoder, generate

    ext = generate(model, prompt, n + k + 1, stop_at_eos=False).token_ids  # k + 1 more: the last rounds' drafts
    ours_plain = ext[:n]
    ll_plain = run_llama(exe, gguf, prompt, n, 0)["plain"]
    ll = run_llama(exe, gguf, prompt, n, k)
    stream = prompt + ext
    chain = model.config.num_mtp_modules > 1         # llama.cpp then drafts depth i with module i (chain_heads)
    k = min(k, model.config.num_mtp_modules) if chain else k
    rounds = []
    # A target that cannot drop rows (llama.cpp's qwen3next: no per-token rollback) restores a checkpoint after a
    # rejection and verifies the kept tokens again; its drafter then pairs the first of them (position pos0) with
    # the hidden it holds from the rejected verify's last row, as nothing resets it on that path (speculative-
    # simple calls common_speculative_accept only after a full acceptance). stale[pos0] emulates that row.
    stale: dict = {}
    ckpt_target = bool((ll.get("info") or {}).get("checkpoint_target"))
    for r in ll["rounds"]:
        if r["redo"] or not r["draft"]:
            continue
        if r["pos0"] >= len(stream) or stream[r["pos0"]] != r["id_last"]:
            break                                    # the plain streams diverged before this round
        committed = stream[: r["pos0"]]
        if chain:
            d_ll = our_draft_chain_heads(model, committed, r["id_last"], len(r["draft"]))
            d_ours = None                            # our chain mode pairs module j with module j-1's outputs
        else:
            d_ll = our_draft(model, committed, r["id_last"], len(r["draft"]), True, stale)
            d_ours = our_draft(model, committed, r["id_last"], len(r["draft"]), False)
        if ckpt_target and r["accepted"] < len(r["draft"]):
            h_verify, _ = model.forward(np.asarray(committed + [r["id_last"]] + r["draft"]), model.new_cache())
            stale[r["pos0"]] = h_verify[-1]
        cont = stream[r["pos0"] + 1:]
        rounds.append({"pos0": r["pos0"], "llama": r["draft"], "ours_llama_conv": d_ll, "ours_conv": d_ours,
                       "accepted_llama": r["accepted"], "accepted_ours": agree_prefix(d_ll, cont),
                       "verify_llama": r["target"], "verify_ours": our_verify_argmax(model, committed, r["id_last"],
                                                                                    r["draft"])})
    # our decoder's own rounds, where llama.cpp drafted at the same position
    dec = SpeculativeDecoder(model, k, "chain" if chain else "recursive")
    dec.prefill(prompt)
    ours_rounds = {}
    while len(dec.generated) < n:
        rec = dec.step()
        ours_rounds[rec.position] = ([d.token for d in rec.drafts], rec.accepted)
    ll_by_pos = {r["pos0"]: r for r in ll["rounds"] if not r["redo"]}
    shared = [p for p in ours_rounds if p in ll_by_pos]
    dec_same = sum(ours_rounds[p][0] == ll_by_pos[p]["draft"] for p in shared)
    dec_acc_same = sum(ours_rounds[p][1] == ll_by_pos[p]["accepted"] for p in shared)
    return {
        "prompt": prompt,
        "plain_equal_prefix": agree_prefix(ours_plain, ll_plain), "n": n,
        "llama_mtp_equals_llama_plain": agree_prefix(ll["mtp"], ll_plain),
        "ours_spec_equals_ours_plain": agree_prefix(dec.generated[:n], ours_plain),
        "rounds": len(rounds),
        "drafts_equal_llama_conv": sum(x["llama"] == x["ours_llama_conv"] for x in rounds),
        "drafts_equal_our_conv": None if chain else sum(x["llama"] == x["ours_conv"] for x in rounds),
        "first_draft_token_equal_llama_conv": sum(x["llama"][0] == x["ours_llama_conv"][0] for x in rounds),
        "accepted_equal": sum(x["accepted_llama"] == x["accepted_ours"] for x in rounds),
        "verify_rows_equal": sum(x["verify_llama"] == x["verify_ours"] for x in rounds),
        "accepted_hist_llama": np.bincount([x["accepted_llama"] for x in rounds], minlength=k + 1).tolist(),
        "accepted_hist_ours": np.bincount([x["accepted_ours"] for x in rounds], minlength=k + 1).tolist(),
        "decoder_accepted_hist": dec.stats.hist,
        "decoder_rounds_shared": len(shared), "decoder_drafts_equal": dec_same, "decoder_accepted_equal": dec_acc_same,
        "info": ll.get("info"),
        "mismatches": [x for x in rounds if x["llama"] != x["ours_llama_conv"] or x["verify_llama"] != x["verify_ours"]
                       or x["accepted_llama"] != x["accepted_ours"]][:5],
    }


def run(args):
    from mtp_ref import load_model

    work = Path(args.work)
    exe = work / "build" / "bin" / TARGET
    if not exe.exists():
        raise SystemExit(f"error: {exe} is missing: run `{Path(__file__).name} build --work {work}` first")
    report = {"llama_cpp_commit": llama_commit(work), "sdist": SDIST, "date": dt.date.today().isoformat(),
              "tokens": args.tokens, "k": args.k, "variants": {}}
    for variant in args.variants.split(","):
        ckpt = make_checkpoint(variant, work)
        gguf = convert(ckpt, work)
        model = load_model(ckpt)
        V = model.config.vocab_size
        results = []
        for i in range(args.prompts):
            prompt = np.random.default_rng(100 + i).integers(0, V, args.prompt_len).tolist()
            res = compare(model, exe, gguf, prompt, args.tokens, args.k)
            results.append(res)
            print(f"{variant} prompt {i}: plain equal {res['plain_equal_prefix']}/{res['n']}, "
                  f"llama mtp = llama plain {res['llama_mtp_equals_llama_plain']}/{res['n']}, "
                  f"drafts equal {res['drafts_equal_llama_conv']}/{res['rounds']} (llama.cpp convention) "
                  f"{res['drafts_equal_our_conv']}/{res['rounds']} (ours), accepted equal "
                  f"{res['accepted_equal']}/{res['rounds']} (llama.cpp {res['accepted_hist_llama']}, ours "
                  f"{res['accepted_hist_ours']}), verify argmax rows equal {res['verify_rows_equal']}/{res['rounds']}, "
                  f"decoder rounds equal "
                  f"{res['decoder_drafts_equal']}/{res['decoder_rounds_shared']}", flush=True)
        report["variants"][variant] = results
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps({v: {k: sum(r[k] or 0 for r in rs) for k in ("rounds", "drafts_equal_llama_conv",
                                                              "drafts_equal_our_conv", "accepted_equal",
                                                              "verify_rows_equal")}
                      for v, rs in report["variants"].items()}, indent=1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--work", default="/tmp/mtp-xcheck")
    b.add_argument("--jobs", type=int, default=2)
    r = sub.add_parser("run")
    r.add_argument("--work", default="/tmp/mtp-xcheck")
    r.add_argument("--variants", default="qwen3_5-vl")
    r.add_argument("--tokens", type=int, default=200)
    r.add_argument("--k", type=int, default=3)
    r.add_argument("--prompts", type=int, default=2)
    r.add_argument("--prompt-len", type=int, default=16)
    r.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.cmd == "build":
        build(Path(args.work), args.jobs)
    else:
        run(args)


if __name__ == "__main__":
    main()
