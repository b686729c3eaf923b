"""The modelled scenario chapters 1 and 6 share: hardware, released model, weight precision, context, batch, k.

Widget values live in st.session_state (common.widget_key), so a choice made in one chapter holds in the other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from explainer import common, roofline
from explainer.presets import HARDWARE, MODELS, PRECISIONS, Hardware

LOADED = "Loaded checkpoint"
RESULTS = common.ROOT / "benchmarks" / "results"


@dataclass
class Scenario:
    hw: Hardware
    cm: roofline.CostModel
    precision: str
    bpp: float
    context: int
    batch: int
    k: int

    @property
    def bw(self) -> float:
        return self.hw.bandwidth_gbs * 1e9

    @property
    def peak(self) -> float:
        return self.hw.tflops * 1e12

    def forward(self, n: int, batch: int | None = None) -> dict:
        return self.cm.forward(n, self.batch if batch is None else batch, self.context, self.bpp, self.bw, self.peak)


def pick(model, with_batch: bool = True) -> Scenario:
    """The scenario widgets, in two rows of columns that stack in narrow windows."""
    with st.container(key="stack_scenario"):
        c1, c2, c3 = st.columns(3)
        names = [h.name for h in HARDWARE]
        hw_name = c1.selectbox("Hardware", names, key=common.widget_key("p1_hw", "NVIDIA H200 SXM",
                                                                        lambda v: v in names))
        common.remember("p1_hw")
        hw = next(h for h in HARDWARE if h.name == hw_name)
        models = ([LOADED] if model is not None else []) + list(MODELS)
        choice = c2.selectbox("Model", models, key=common.widget_key("p1_model", "MiMo-7B", lambda v: v in models))
        common.remember("p1_model")
        if choice == LOADED:
            cm, precisions = common.loaded_cost(common.model_key(model), model), ["as stored"] + list(PRECISIONS)
        else:
            cm, precisions = roofline.from_config(choice, MODELS[choice]), list(PRECISIONS)
            for note in cm.notes:   # e.g. a release that declares MTP but ships no MTP weights (MiniMax-M2)
                st.caption(f"{choice}: {note}")
        precision = c3.selectbox("Weight precision", precisions,
                                 key=common.widget_key("p1_prec", precisions[0], lambda v: v in precisions))
        common.remember("p1_prec")
        c4, c5, c6 = st.columns(3)
        context = c4.select_slider("Context (tokens already in the KV cache)",
                                   [0, 512, 1024, 4096, 16384, 65536, 131072], key=common.widget_key("p1_ctx", 4096))
        common.remember("p1_ctx")
        batch = 1
        if with_batch:
            batch = c5.select_slider("Batch (sequences decoded together)", [1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
                                     key=common.widget_key("p1_batch_size", 1))
            common.remember("p1_batch_size")
        k = c6.slider("Draft depth k (tokens guessed per cycle)", 1, 8, key=common.widget_key("p1_k", 3))
        common.remember("p1_k")
    bpp = cm.stored_bpp if precision == "as stored" else PRECISIONS[precision].bytes_per_param
    return Scenario(hw, cm, precision, bpp, int(context), int(batch), int(k))


# ---------------------------------------------------------------------- GPU measurements shipped as data

REQUIRED = ("device", "date", "command", "model", "verify_ms")


@st.cache_data(show_spinner=False)
def gpu_results(folder: str, stamp: float) -> tuple[list[dict], list[str]]:
    """The project's GPU measurements (verify-cost JSON files in `folder`), and a note per file that could not be
    read. `stamp` (the files' modification times) makes a changed file a new read."""
    out, problems = [], []
    for f in sorted(Path(folder).glob("*.json")):
        try:
            d = json.loads(f.read_text())
            if not str(d.get("schema", "")).startswith("mtp-ref verify-cost"):
                continue                     # another kind of result file (e.g. a CPU evaluation run)
            missing = [k for k in REQUIRED if k not in d]
            if missing:
                raise ValueError(f"missing keys {missing}")
            for s in d["verify_ms"]:
                if len(s["n"]) != len(s["ms"]) or not s["n"]:
                    raise ValueError(f"series '{s.get('engine')}' has {len(s['n'])} n and {len(s['ms'])} ms")
            d["file"] = str(f.relative_to(common.ROOT)) if f.is_relative_to(common.ROOT) else str(f)
            if "moe_verify" in d and (bad := moe_verify_problems(d["moe_verify"])):
                problems.append(f"{f.name}: its moe_verify section is left out ({bad[0]})")
                del d["moe_verify"]
            out.append(d)
        except (OSError, ValueError, KeyError, TypeError) as e:
            problems.append(f"{f.name}: not a verify-cost result file ({e})")
    return out, problems


def load_gpu_results() -> tuple[list[dict], list[str]]:
    files = sorted(RESULTS.glob("*.json"))
    return gpu_results(str(RESULTS), sum(f.stat().st_mtime for f in files) if files else 0.0)


def ours(s: dict) -> bool:
    return str(s.get("engine", "")).startswith("mtp-ref")


def engine_name(s: dict) -> str:
    """A series' engine in two words for a legend: 'our kernels' or the peer's name."""
    return "our kernels" if ours(s) else str(s.get("engine", "?")).split(" (")[0]


def verify_ratio(d: dict, n: int, ctx: int | None = None) -> tuple[float, float, float] | None:
    """(ms at n, ms at 1, ratio) from a result file's first series of our kernels (at context ctx if given)."""
    for s in d["verify_ms"]:
        if ours(s) and (ctx is None or s.get("ctx") == ctx) and n in s["n"] and 1 in s["n"]:
            a, b = s["ms"][s["n"].index(n)], s["ms"][s["n"].index(1)]
            return a, b, a / b
    return None


def verify_costs(d: dict) -> dict[int, float]:
    """{k: verify(k+1) / verify(1)} from a result file's first series of our kernels: the v_k of the speedup formula."""
    s = next(x for x in d["verify_ms"] if ours(x) and 1 in x["n"])
    one = s["ms"][s["n"].index(1)]
    return {n - 1: ms / one for n, ms in zip(s["n"], s["ms"]) if n >= 2}


def cite(d: dict) -> str:
    return (f"{d['device']}, {d['date']}; {d['model']}. Source: `{d['file']}` "
            f"({d.get('source', '')}). Command: `{d['command'][:160]}{'…' if len(d['command']) > 160 else ''}`")


# ---------------------------------------------------------------------- the MoE verify curve (bench_moe_verify.py)
# A result file's optional "moe_verify" section (made by benchmarks/bench_moe_verify.py's results_section): the
# config it ran and, per context, n = 1.. with device ms (median, spread), the distinct experts each MoE layer
# touched (mean over layers x draws, p10 / p90) and the weight bytes read.

MOE_REQUIRED = ("model", "device", "date", "command", "config", "n_experts", "top_k", "moe_layers", "series")
MOE_SERIES = ("n", "ms", "spread_ms", "distinct_mean", "distinct_p10", "distinct_p90", "weight_bytes")


def moe_verify_problems(sec) -> list[str]:
    """What is wrong with a moe_verify section ([] when it can be shown)."""
    if not isinstance(sec, dict):
        return ["not an object"]
    missing = [k for k in MOE_REQUIRED if k not in sec]
    if missing:
        return [f"missing keys {missing}"]
    out = []
    for s in sec["series"]:
        lost = [k for k in MOE_SERIES + ("ctx",) if k not in s]
        if lost:
            out.append(f"a series lacks {lost}")
        elif not s["n"] or s["n"][0] != 1 or any(len(s[k]) != len(s["n"]) for k in MOE_SERIES):
            out.append(f"series at context {s['ctx']}: n must start at 1 and every list must have one value per n")
    return out if sec["series"] else ["no series"]


def moe_measurements(results: list[dict]) -> list[dict]:
    """The moe_verify sections of the result files, each with the file it came from."""
    return [dict(d["moe_verify"], file=d["file"]) for d in results if "moe_verify" in d]


def moe_cost_model(sec: dict) -> roofline.CostModel:
    """The explainer's cost model (uniform routing) of the shape that was measured, from the config it ran."""
    return roofline.from_config(sec["model"].split(" (")[0], {k: v for k, v in sec["config"].items()})


def hardware_for(device: str, default: Hardware) -> Hardware:
    """The datasheet preset of the GPU a measurement ran on (e.g. 'NVIDIA H200 (132 SMs)'), else `default`."""
    chip = device.split(" (")[0].removeprefix("NVIDIA ").split()[0] if device else ""
    return next((h for h in HARDWARE if chip and h.name.removeprefix("NVIDIA ").split()[0] == chip), default)
