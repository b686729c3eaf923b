"""Put re-distilled MTP tensors (training/distill_variants.sh) into a checkpoint, and append that run's
loss curves and log to the checkpoint's own.

    python training/merge_mtp.py --ckpt mtp_ref/checkpoints/mtp-tiny --mtp OUT/untied_lr1_mtp.safetensors \
        --logs OUT/logs.tgz --variant untied_lr1

Only tensors of the MTP modules (model.layers.{L..L+D-1}.*) may change; the trunk stays bit-identical,
so plain decoding is unchanged and only the drafts (and so acceptance) move.
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
from pathlib import Path


def main():
    import torch
    from safetensors.torch import load_file, save_file
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--mtp", required=True)
    ap.add_argument("--logs", default=None)
    ap.add_argument("--variant", default=None)
    a = ap.parse_args()
    ck = Path(a.ckpt)
    cfg = json.loads((ck / "config.json").read_text())
    L, D = cfg["num_hidden_layers"], cfg["num_nextn_predict_layers"]
    mtp_prefixes = tuple(f"model.layers.{L + j}." for j in range(D))
    sd = load_file(str(ck / "model.safetensors"))
    new = load_file(a.mtp)
    for k, v in new.items():
        if not k.startswith(mtp_prefixes):
            raise SystemExit(f"{a.mtp}: tensor {k} is not part of an MTP module; refusing to change the trunk")
        if k not in sd or sd[k].shape != v.shape or sd[k].dtype != v.dtype:
            raise SystemExit(f"{a.mtp}: tensor {k} does not match the checkpoint's name/shape/dtype")
        sd[k] = v
    save_file(sd, str(ck / "model.safetensors"), metadata={"format": "pt"})
    print(f"replaced {len(new)} MTP tensors in {ck / 'model.safetensors'}")
    if a.logs:
        with tarfile.open(a.logs) as tf:
            def read(name):
                return tf.extractfile(f"{a.variant}/{name}").read().decode()
            rows = read("loss_curves.csv").splitlines()[1:]
            with open(ck / "loss_curves.csv", "a") as f:
                f.write("\n".join(rows) + "\n")
            with open(ck / "train_log.txt", "a") as f:
                f.write(f"\n# ---- stage 3 (training/distill_variants.sh, variant {a.variant}) ----\n")
                f.write(read("train_log.txt"))
            metrics = json.loads((ck / "heldout_metrics.json").read_text())
            metrics["stage3_" + a.variant] = json.load(io.StringIO(read("heldout_metrics.json")))
            (ck / "heldout_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        print(f"appended {len(rows)} loss-curve rows and the log of variant {a.variant}")


if __name__ == "__main__":
    main()
