"""A bit-exact fingerprint of the training loop: run it before and after a change that must not alter behaviour.

Tiny models on the CPU (one thread, fixed seeds), a few dozen steps each, covering what the loop does: DCGAN and
StyleGAN, unconditional and conditional (concat and projection), lazy R1 / path-length steps (steps 0, 16, 32),
style mixing, EMA (a half-life and a plain copy), label smoothing, the hinge loss, bf16 autocast, frozen D
blocks, snapshots, a transfer (init-from with another class count) and a resume case (train K steps, stop, resume
to 2K == 2K straight, bit for bit).

For each case it records the sha256 of every tensor of the final checkpoint (G, D, G_ema, both optimisers, the
regularisers' state, the sampler and RNG state), of every sampling snapshot's G_ema, of every sample grid, the
training options (config.json without the run's inputs and output) and the exact logged losses of every step.

    python benchmarks/train_fingerprint.py                     # writes benchmarks/results/train_fingerprint.json
    python benchmarks/train_fingerprint.py --out before.json   # then: diff before.json after.json

The JSON holds nothing that varies between runs of the same code (no times, no paths, no commit), so two runs of
unchanged behaviour give identical files.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch
from common import RESULTS  # noqa: F401  (puts the checkout's src/ on sys.path)

DATA = "synthetic:?n=64&resolution=16&hair=blonde,blue,black&eyes=red,green"
DATA_B = "synthetic:?n=48&seed=7&resolution=16&hair=blonde,pink&eyes=red,green"  # transfer target: other classes
TINY = {
    "dcgan": dict(z_dim=16, channel_base=128, channel_max=64),
    "stylegan": dict(z_dim=16, w_dim=16, mapping_layers=2, channel_base=128, channel_max=32),
}
STEPS = 40  # batch 8: 0.32 kimg; R1 / path length due at steps 0, 16 and 32
COMMON = dict(resolution=16, batch=8, kimg=STEPS * 8 / 1000, snapshot_kimg=STEPS * 8 / 2000, log_every=1,
              progress=False, device="cpu", seed=3)
CASES = {
    "dcgan": dict(arch="dcgan"),
    "dcgan-cond-ema-hinge": dict(arch="dcgan", conditional=True, ema_kimg=0.05, loss="hinge", real_label=[1, 1]),
    "dcgan-amp-freeze": dict(arch="dcgan", amp="on", freeze_d=1),
    "stylegan": dict(arch="stylegan"),
    "stylegan-cond-concat": dict(arch="stylegan", conditional=True, cond_mode="concat"),
    "stylegan-cond-projection": dict(arch="stylegan", conditional=True, cond_mode="projection", ema_kimg=0.1),
}
TRANSFERS = [
    ("transfer-stylegan-cond-remap", "stylegan-cond-concat",
     dict(arch="stylegan", conditional=True, class_map={"pink hair red eyes": "blue hair red eyes"},
          init_class="blonde hair", freeze_d=1)),
    ("transfer-dcgan-cond-fold", "dcgan-cond-ema-hinge",
     dict(arch="dcgan", init_class="black hair", loss="hinge", real_label=[1, 1])),
]
RUN_KEYS = ("data", "out", "init_from")  # the run's inputs and output, not training options


def _train(cfg_kw: dict, data: str, out: Path, resume: bool = False, init_from: str | None = None) -> None:
    """Train through whichever entry point this checkout has (run_train / run_transfer, or the older train())."""
    import animegen.train as T

    if hasattr(T, "run_train"):
        cfg = T.TrainConfig(**cfg_kw)
        if init_from:
            T.run_transfer(cfg, init_from, data, out, resume=resume)
        else:
            T.run_train(cfg, data, out, resume=resume)
    else:
        T.train(T.TrainConfig(**cfg_kw, data=data, out=str(out), init_from=init_from), resume=resume)


def _digest(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}{list(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _hashes(obj, prefix: str = "") -> dict[str, str]:
    """Every tensor (and plain value) in a nested checkpoint structure, by its path."""
    if isinstance(obj, torch.Tensor):
        return {prefix: _digest(obj)}
    if isinstance(obj, dict):
        out = {}
        for k in sorted(obj, key=str):
            out |= _hashes(obj[k], f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(obj, (list, tuple)):
        out = {}
        for i, v in enumerate(obj):
            out |= _hashes(v, f"{prefix}[{i}]")
        return out
    return {prefix: repr(obj)}


def _sha_file(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _init_report(out: Path) -> dict | None:
    """A transfer's init_report.json without the source's (temporary) path."""
    p = out / "init_report.json"
    return {k: v for k, v in json.loads(p.read_text()).items() if k != "source"} if p.exists() else None


def fingerprint(out: Path) -> dict:
    """What a finished run left in ``out``, reduced to hashes and exact numbers."""
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    cfg = json.loads((out / "config.json").read_text())
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if line.strip()]
    return {
        "config": {k: v for k, v in cfg.items() if k not in RUN_KEYS},
        "log": [{k: v for k, v in r.items() if k != "img_s"} for r in rows],
        "checkpoint": _hashes({k: v for k, v in state.items() if k not in ("config", "version")}),
        "snapshots": {p.name: _hashes(torch.load(p, weights_only=True)["G_ema"])
                      for p in sorted((out / "snapshots").iterdir())},
        "samples": {p.name: _sha_file(p) for p in sorted((out / "samples").iterdir())},
        "init_report": _init_report(out),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(RESULTS / "train_fingerprint.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # CPU float reductions are bit-reproducible per thread count
    doc: dict = {"torch": torch.__version__, "threads": 1, "steps": STEPS, "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, kw in CASES.items():
            cfg = COMMON | TINY[kw["arch"]] | kw
            _train(cfg, DATA, tmp / name)
            doc["cases"][name] = fingerprint(tmp / name)
            print(f"{name}: {len(doc['cases'][name]['checkpoint'])} tensors, "
                  f"final loss_d {doc['cases'][name]['log'][-1]['loss_d']:.6f}", flush=True)
        # transfer: conditional StyleGAN into one with other classes (remapped, D's first block frozen), and a
        # conditional DCGAN folded into an unconditional one
        for name, src, kw in TRANSFERS:
            cfg = COMMON | TINY[kw["arch"]] | kw
            _train(cfg, DATA_B, tmp / name, init_from=str(tmp / src))
            doc["cases"][name] = fingerprint(tmp / name)
            print(f"{name}: {doc['cases'][name]['init_report']}", flush=True)
        # resume: K steps, stop, resume to 2K; must equal the straight 2K run of the same case bit for bit
        name = "stylegan-cond-concat"
        cfg = COMMON | TINY["stylegan"] | CASES[name]
        _train(cfg | dict(kimg=cfg["kimg"] / 2), DATA, tmp / "resumed")
        _train(cfg, DATA, tmp / "resumed", resume=True)
        resumed = fingerprint(tmp / "resumed")
        straight = doc["cases"][name]
        same = {k: resumed[k] == straight[k] for k in ("log", "checkpoint", "snapshots")}
        doc["resume"] = {"case": name, "stop_at_step": STEPS // 2, "identical_to_straight_run": same}
        print(f"resume {name} at step {STEPS // 2}: identical to the straight run: {same}", flush=True)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path}")
    return 0 if all(same.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
