"""Landing page: what the lesson teaches, in five lines, and where to begin."""

from __future__ import annotations

import streamlit as st

from explainer import common

common.chapter("", "Multi-token prediction: faster decoding, same output",
               "A language model writes one token per forward pass and spends most of that pass waiting for "
               "its weights to arrive from memory. Models such as DeepSeek-V3, GLM-4.5, MiMo and Qwen3.5 ship "
               "small extra modules that guess the next few tokens; the full model checks all the guesses in "
               "one pass and keeps the ones it agrees with.")

st.markdown("""
**In this lesson you will see, on a real (tiny) model running on this computer:**

1. **The wait**: why one token per forward pass leaves the chip idle.
2. **Guess and check**: drafting k tokens and verifying them in one forward, token by token against plain decoding.
3. **Where the guesses come from**: inside an MTP module, with its real tensors and values.
4. **Keeping the output exact**: the accept rule, the correction token and the cache rollback that make the output
   identical to plain decoding (greedy) or identically distributed (sampling).
5. **How much faster, and where it stops paying**: measured acceptance and speed, and the limits: big batches,
   mixture-of-experts models, memory.
""")
st.markdown("Each chapter opens with its takeaway, shows the evidence, and ends with a question you answer "
            "before the app reveals the measured result. The **Lab** pages are for engineers: inspect a checkpoint "
            "for its MTP weights, and port the algorithm with a golden trace to diff against.")
model, err = common.load(st.session_state.get("ckpt_path", common.default_path()))
if model is None:
    st.error(f"**The checkpoint could not be loaded.** {err}")
else:
    c = model.config
    st.markdown(f"**The model on this machine**: `{c.model_type}`, {c.num_hidden_layers} layers, hidden size "
                f"{c.hidden_size}, {c.num_mtp_modules} MTP module(s), loaded from `{model.path}`. "
                "Everything runs on the CPU, offline.")
st.markdown("**Teaching with it?** Switch on *Presenter mode* in the sidebar (or open the address with "
            "`?presenter=1`) for larger type. A 90-minute plan with questions and exercises is in `docs/workshop.md`.")
common.glossary()
common.next_chapter("views/why_slow.py", "1 · The wait")
