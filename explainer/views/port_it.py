"""Lab, port it: what a porter needs: the formulas, the loaded family's tensor names, and a golden trace."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

from explainer import common
from mtp_ref import MtpRefError
from mtp_ref.families import block_tensors, mtp_tensors
from mtp_ref.trace import write_trace

FORMULAS = [
    ("MTP module j, row i (embedding-first families; MiMo puts the hidden first)",
     r"g^{j}_i = \mathrm{norm}_{out}\Big(\mathrm{Block}_j\big(W_{proj}\,[\,\mathrm{norm}_e(E[t_{i+j+1}])\,;"
     r"\,\mathrm{norm}_h(g^{j-1}_i)\,]\big)\Big),\quad g^{-1}_i = h_i,\quad q_j = \mathrm{softmax}(W_{head}\,g^{j}_i)"),
    ("Greedy verification: accept while the draft equals the target's argmax",
     r"a = \max\{\,m : d_l = \arg\max p_{l-1}\ \ \forall\, l \le m\,\},\quad \text{then emit } "
     r"\arg\max p_a"),
    ("Sampling: accept draft d_l with probability",
     r"\Pr[\text{accept } d_l] = \min\!\Big(1, \frac{p_{l-1}(d_l)}{q_l(d_l)}\Big)"),
    ("On the first rejection at depth l, draw the correction from the residual",
     r"r(x) = \frac{\max(p_{l-1}(x) - q_l(x),\,0)}{\sum_y \max(p_{l-1}(y) - q_l(y),\,0)}"),
    ("All k accepted: one bonus token from the last verify row", r"t \sim p_k"),
    ("Expected tokens per verify round with i.i.d. acceptance a",
     r"\mathbb{E}[\text{tokens}] = \sum_{i=0}^{k} a^i = \frac{1-a^{k+1}}{1-a}"),
    ("Speedup when a draft costs c of a trunk forward and verifying k+1 tokens costs one forward",
     r"S = \frac{1-a^{k+1}}{(1-a)\,(1+k\,c)}"),
    ("Bytes one decode forward reads (memory-bound regime: time = bytes / bandwidth)",
     r"B = b\,\big(P_{dense} + m H + L_{moe}\,\mathbb{E}[\#\text{experts}]\,P_{expert}\big) + B_{KV}"),
    ("Distinct experts per MoE layer when m tokens each pick e of E experts uniformly (e: experts per token, not "
     "the draft depth k)",
     r"\mathbb{E}[\#\text{experts}] = E\,\big(1 - (1 - e/E)^m\big)"),
]


@st.cache_data(show_spinner="Writing the golden trace ...")
def trace_bytes(key: str, ids: tuple, _model) -> tuple[bytes, list[dict]]:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "trace.safetensors"
        tr = write_trace(_model, list(ids), path)
        data = path.read_bytes()
    rows = [{"key": k, "shape": str(list(v.shape)), "dtype": str(v.dtype)} for k, v in tr.items()]
    return data, rows


def shapes_table(names: dict) -> pd.DataFrame:
    return pd.DataFrame([{"tensor": n, "shape": str(list(s))} for n, s in names.items()])


def family_section(model) -> None:
    cfg, spec = model.config, model.spec
    if spec is None:     # families with a module of their own (Gemma 4: mtp_ref/gemma4.py) have no FamilySpec
        st.subheader(f"The loaded family: {cfg.model_type}")
        st.markdown(f"`{cfg.model_type}` is loaded by a module of its own rather than a family spec, so its tensor "
                    "table is not drawn here: `docs/algorithm.md` lists its tensors, and `python -m mtp_ref inspect "
                    "DIR` the ones this checkpoint holds. Gemma 4 drafts with a separate assistant checkpoint: "
                    "`python -m mtp_ref generate --model TARGET --drafter ASSISTANT --draft K`.")
        return
    lay = spec.mtp
    st.subheader(f"The loaded family: {spec.name}")
    facts = {"transformers oracle": spec.hf_class, "attention": spec.attention, "RoPE pairs": spec.rope_style,
             "MoE router": "sigmoid, bias-corrected, group-limited" if spec.moe else "none (dense MLP)",
             "MTP modules in the weights": cfg.num_mtp_modules,
             "num_nextn_predict_layers (config)": cfg.num_nextn_predict_layers}
    if lay:
        facts.update({"MTP prefix": lay.prefix.format(L=f"{cfg.num_hidden_layers}+j", j="j"),
                      "concat order": "[hidden, embedding]" if lay.hidden_first else "[embedding, hidden]",
                      "own head / embedding": f"{lay.head or 'lm_head'} / {lay.embed or 'model.embed_tokens'}"})
    st.dataframe(pd.DataFrame([{"property": k, "value": str(v)} for k, v in facts.items()]), hide_index=True)
    c1, c2 = st.columns(2)
    with c1:
        st.markdown("**Trunk block, layer 0** (prefix `model.layers.0.`)")
        st.dataframe(shapes_table(block_tensors(cfg, spec, 0)), hide_index=True)
        moe = [i for i in range(cfg.num_hidden_layers) if spec.moe and cfg.is_moe_layer(i)]
        if moe:
            t = {n: s for n, s in block_tensors(cfg, spec, moe[0]).items()
                 if n.startswith("mlp.") and (".experts." not in n or ".experts.0." in n)}
            st.markdown(f"**MoE layers from {moe[0]}**: attention as above; the MLP becomes "
                        f"(experts 1 .. {cfg.n_routed_experts - 1} like expert 0)")
            st.dataframe(shapes_table(t), hide_index=True)
    with c2:
        if cfg.num_mtp_modules:
            t = {n: s for n, s in mtp_tensors(cfg, spec, 0).items()
                 if n in model.ckpt and (".experts." not in n or ".experts.0." in n)}
            st.markdown(f"**MTP module 0** (prefix `{lay.module_prefix(cfg, 0)}`)")
            st.dataframe(shapes_table(t), hide_index=True)
        else:
            st.info("No MTP module in these weights.")


def trace_section(model, ids: list[int]) -> None:
    st.subheader("Golden trace of the current prompt")
    st.markdown("Every intermediate, teacher forced over the prompt in float32: embeddings, each block's output, "
                "the final hidden, logits, and each MTP depth's inputs, positions, hidden and logits. Diff your "
                "port against it row by row (suggested tolerance: max|a − b| / max|b| ≤ 1e-4 in float32).")
    try:
        data, rows = trace_bytes(common.model_key(model), tuple(ids), model)
    except MtpRefError as e:
        st.error(str(e))
        return
    st.download_button(f"Download trace.safetensors ({common.fmt_bytes(len(data))}, {len(ids)} tokens)", data,
                       file_name="trace.safetensors", mime="application/octet-stream", key="p5_download",
                       type="primary")
    with st.expander(f"{len(rows)} tensors in the trace"):
        st.dataframe(pd.DataFrame(rows), hide_index=True)
    prompt = common.prompt_text().replace('"', '\\"')
    model_arg = f" --model {model.path}" if st.session_state.get("ckpt_path") else ""
    st.code(f'python -m mtp_ref trace{model_arg} --prompt "{prompt}" --out trace.safetensors', language="bash")
    st.markdown("Format: `docs/trace-format.md`. The algorithm, in formulas: `docs/algorithm.md`.")


def main() -> None:
    common.chapter("Lab", "Port it",
                   "To reimplement MTP in another engine you need the formulas, the family's tensor names and "
                   "concat order, and a golden trace of every intermediate to diff your port against, row by row.")
    st.subheader("Formulas")
    st.markdown("Indices: the verify forward runs the trunk on [t_N, d_1 .. d_k]; p_j is its distribution at row j "
               "(row 0 is the pending token t_N), so p_(l-1) scores draft d_l and p_k gives the bonus token. "
               "q_l is the distribution d_l was drafted from. The same temperature / top-k / top-p apply to p and q.")
    for text, tex in FORMULAS:
        st.markdown(text)
        st.latex(tex)
    model = common.require_model()
    family_section(model)
    trace_section(model, common.prompt_ids(model))


main()
