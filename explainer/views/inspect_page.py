"""Lab: inspect a checkpoint: are its MTP heads still there? Full checkpoints, index-only folders, GGUF files."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from explainer import common
from mtp_ref import MtpRefError
from mtp_ref.inspect_ckpt import inspect_path, verdict


@st.cache_data(show_spinner="Reading the checkpoint ...", max_entries=16)
def report(path: str, stamp: float) -> dict:
    return inspect_path(path or None)


def stamp_of(path: str) -> float:
    from pathlib import Path
    p = Path(path) if path else None
    try:
        return max((f.stat().st_mtime for f in p.iterdir()), default=0.0) if p and p.is_dir() else \
            (p.stat().st_mtime if p and p.exists() else 0.0)
    except OSError:
        return 0.0


def main() -> None:
    common.chapter("Lab", "Inspect a checkpoint",
                   "Converters and quantisers often drop the MTP tensors, or keep them at a much lower precision "
                   "than the model, while the config still declares them; check before you expect a speedup.")
    st.markdown("Give a checkpoint folder (config.json with its safetensors, or only config.json and "
                "`model.safetensors.index.json`: a 600 GB release can be checked from its 100 kB index), or a "
                "`.gguf` file. Empty = the bundled model. The same check from a terminal: "
                "`python -m mtp_ref inspect PATH`.")
    path = st.text_input("Checkpoint folder or .gguf file", key=common.widget_key("i_path", ""),
                         placeholder="empty = the bundled tiny MTP model")
    common.remember("i_path")
    try:
        r = report(path.strip(), stamp_of(path.strip()))
    except MtpRefError as e:
        st.error(str(e))
        return
    except (OSError, ValueError) as e:          # an unreadable file the inspector did not anticipate
        st.error(f"{path}: cannot be read ({type(e).__name__}: {e})")
        return
    v = verdict(r)
    (st.warning if ("missing" in v or "expect lower" in v) else st.success)(f"**{v}**")
    with st.container(key="stack_inspect"):
        c1, c2 = st.columns(2)
        facts = {"format": r.get("format"), "family": r.get("family"), "layers": r.get("layers"),
                 "hidden size": r.get("hidden_size"), "vocabulary": r.get("vocab_size"),
                 "MTP modules declared": r.get("mtp_declared"), "MTP modules present": r.get("mtp_present")}
        bits = r.get("bits_per_weight") or {}
        for k, b in bits.items():
            if b is not None:
                facts[f"bits per weight, {k}"] = f"{b:.2f}"
        c1.dataframe(pd.DataFrame([{"property": k, "value": str(x)} for k, x in facts.items()]), hide_index=True)
        mods = r.get("mtp_modules") or []
        if mods:
            c2.dataframe(pd.DataFrame([{"module": m["module"], "prefix": m["prefix"], "tensors": m["tensors"],
                                        "bytes": common.fmt_bytes(m["bytes"]) if m["bytes"] is not None else "?",
                                        "types": ", ".join(f"{k}: {n}" for k, n in sorted(m["dtypes"].items()))}
                                       for m in mods]), hide_index=True)
        else:
            c2.markdown("No MTP module tensors in this file.")
    for w in r.get("warnings", []):
        st.warning(w)
    for n in r.get("notes", []):
        st.markdown(f"*Note:* {n}")
    with st.expander("The whole report (the same keys as `inspect --json`)"):
        st.json(r)
    common.next_chapter("views/port_it.py", "Lab · Port it")


main()
