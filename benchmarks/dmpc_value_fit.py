"""How well D-MPC's terminal values predict the return from the state a plan reaches, on held-out episodes.

For every window of F steps with a step after it in a dataset (held-out episodes of the same policy, not the
training data), each checkpoint's terminal value gets the window's real context, actions and states s_{t+1..t+F}
(an MLP value reads only s_{t+F}; a transformer value reads them all) and is compared with the discounted
Monte-Carlo return from s_{t+F}. Reports RMSE in return units, the correlation, and the RMSE of always
predicting the mean return (the floor any value must beat).

    PYTHONPATH=src python benchmarks/dmpc_value_fit.py --data runs/dmpc/walker2d/walker2d-heldout.h5 \\
        --ckpt runs/dmpc/walker2d/ck-dmpc-medium-x0 --ckpt runs/dmpc/walker2d/ck-dmpc-medium-x0-tv1 \\
        --json benchmarks/results/dmpc/locomotion/walker2d-medium/value_fit.json
"""

from __future__ import annotations

import argparse
from datetime import date

import numpy as np
import torch
from _dmpc_run import cpu_name

from paperclub.atomic import write_json
from paperclub.dmpc import checkpoint
from paperclub.dmpc.dataset import load_dataset
from paperclub.dmpc.windows import Windows


def value_fit(ckpt: str, data, batch: int = 4096) -> dict:
    model, _ = checkpoint.load(ckpt, env=data.env)
    windows = Windows(data, model.cfg.horizon, model.cfg.history, discount=model.cfg.discount)
    predicted, target = [], []
    with torch.no_grad():
        for rows in windows.valid.split(batch):
            b = windows.batch(rows, model.norms)
            keep = b["has_after"]
            n = model.norms
            v = model.terminal_value(b["context"][keep], n.act.unnormalize(b["actions"][keep]),
                                     n.obs.unnormalize(b["future_states"][keep]))
            predicted.append(v)
            target.append(n.ret.unnormalize(b["returns_after"][keep][:, None])[:, 0])
    v, g = torch.cat(predicted).numpy(), torch.cat(target).numpy()
    return {"ckpt": ckpt, "value_arch": model.cfg.value_arch, "value_members": model.cfg.value_members,
            "windows": len(g), "rmse": float(np.sqrt(np.mean((v - g) ** 2))),
            "corr": float(np.corrcoef(v, g)[0, 1]), "rmse_of_the_mean": float(g.std())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="held-out episodes (a `paperclub dmpc collect` dataset)")
    ap.add_argument("--ckpt", action="append", required=True, help="a D-MPC checkpoint (repeat to compare)")
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    data = load_dataset(args.data)
    rows = [value_fit(ck, data) for ck in args.ckpt]
    for r in rows:
        print(f"{r['ckpt']}: {r['value_arch']} x{r['value_members']}  RMSE {r['rmse']:.1f}  corr {r['corr']:.3f}  "
              f"(predicting the mean: {r['rmse_of_the_mean']:.1f}; {r['windows']} windows)")
    write_json(args.json, {"date": date.today().isoformat(), "cpu": cpu_name(), "data": args.data,
                           "values": rows})


if __name__ == "__main__":
    main()
