"""First-render time of each lesson page (target: <= 3 s on a 2-core laptop CPU, bundled model).

    python benchmarks/app_render.py                  # bundled model
    python benchmarks/app_render.py --model DIR      # any checkpoint

Each page is measured in a fresh Python process with empty Streamlit caches, through
streamlit.testing.v1.AppTest (the script run a browser session triggers, minus the network):
  * "first render": the page's first run in a new session. For the landing page this includes loading
    the checkpoint; for the others the checkpoint was loaded by the landing page just before, as in a
    real visit, and everything else the page computes is cold.
  * "rerun": the same page run again in that session (what a widget change costs at least).
Each page is measured REPEATS times (a fresh process each); the table gives the median and the range.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
APP = ROOT / "explainer" / "app.py"
PAGES = [("views/start.py", "Start here"), ("views/why_slow.py", "1 The wait"),
         ("views/guess_check.py", "2 Guess and check"), ("views/draft_heads.py", "3 Where the guesses come from"),
         ("views/verification.py", "4 Keeping the output exact"), ("views/acceptance.py", "5 How much faster"),
         ("views/limits.py", "6 Where it stops paying"), ("views/inspect_page.py", "Lab: inspect a checkpoint"),
         ("views/port_it.py", "Lab: port it")]
REPEATS = 3


def measure_one(page: str) -> dict:
    """Runs in the child process: landing page, then `page`, then `page` again."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=600)
    t = time.perf_counter()
    at.run()
    landing = time.perf_counter() - t
    out = {"landing": landing, "exception": [e.value for e in at.exception]}
    if page == PAGES[0][0]:
        first = landing
    else:
        at.switch_page(page)
        t = time.perf_counter()
        at.run()
        first = time.perf_counter() - t
    t = time.perf_counter()
    at.run()
    out.update(first=first, rerun=time.perf_counter() - t, errors=[e.value for e in at.error],
               exception=out["exception"] + [e.value for e in at.exception])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint directory (default: the bundled model)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure_one(args.child)))
        return 0
    env = dict(os.environ)
    if args.model:
        env["MTP_REF_MODEL"] = str(Path(args.model).resolve())
    from mtp_ref import load_model

    t = time.perf_counter()
    model = load_model(env.get("MTP_REF_MODEL") or None)
    load_s = time.perf_counter() - t
    print(f"checkpoint: {model.path} ({model.config.model_type}, {model.config.num_hidden_layers} layers, "
          f"{model.config.num_mtp_modules} MTP modules); load_model alone: {load_s:.2f} s; "
          f"CPU cores: {os.cpu_count()}\n")
    print(f"| page | first render, median of {REPEATS} (s) | range (s) | rerun (s) | notes |")
    print("|---|---:|---:|---:|---|")
    worst = 0.0
    for page, name in PAGES:
        res = []
        for _ in range(REPEATS):
            r = subprocess.run([sys.executable, __file__, "--child", page], env=env, cwd=ROOT, capture_output=True,
                               text=True, timeout=1200)
            if r.returncode != 0:
                print(f"| {name} | failed | | | {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''} |")
                break
            res.append(json.loads(r.stdout.strip().splitlines()[-1]))
        if len(res) < REPEATS:
            continue
        first = sorted(x["first"] for x in res)
        med = first[len(first) // 2]
        notes = "incl. checkpoint load" if page == PAGES[0][0] else "after the landing page"
        problems = [p for x in res for p in x["exception"] + x["errors"]]
        if problems:
            notes += f"; PROBLEM: {problems[0][:80]}"
        worst = max(worst, med)
        rerun = sorted(x["rerun"] for x in res)[len(res) // 2]
        print(f"| {name} | {med:.2f} | {first[0]:.2f}-{first[-1]:.2f} | {rerun:.2f} | {notes} |")
    print(f"\nslowest median first render: {worst:.2f} s (target <= 3 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
