"""The multi-step diffusion dynamics' held-out error by denoiser target (epsilon, x0 = "sample", v), against MBOP's
single-step ensemble rolled out: the dynamics model alone, trained the same number of steps on the same data.

    OMP_NUM_THREADS=1 python benchmarks/dmpc_prediction_target.py --env hopper --work runs/dmpc/hopper --steps 3000 \\
        --json benchmarks/results/dmpc/locomotion/prediction_target_hopper.json

--work is dmpc_locomotion.py's work directory (ENV-medium.h5, ENV-heldout.h5, ck-mbop-medium). Denoiser d = 64,
2 layers, F = 8, one step of history, batch 256, AdamW 3e-4, EMA 0.995 (as `paperclub dmpc train`); error = RMS over
state dimensions in training-data stds at k = 1..8 from 512 held-out starts, 10 DDIM steps.
"""

from __future__ import annotations

import argparse
import time
from datetime import date
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from paperclub.atomic import write_json
from paperclub.dmpc import mbop
from paperclub.dmpc.dataset import load_dataset
from paperclub.dmpc.denoiser import DenoiserConfig
from paperclub.dmpc.diffusion import PREDICTIONS
from paperclub.dmpc.models import ModelConfig, TrajectoryModel
from paperclub.dmpc.prediction_error import prediction_errors
from paperclub.dmpc.train import TrainConfig, _windows


def train_dynamics(data, env: str, prediction: str, steps: int, seed: int) -> tuple[TrajectoryModel, float]:
    torch.manual_seed(seed)
    cfg = TrainConfig(steps=steps, horizon=8, history=1, denoiser=DenoiserConfig(64, 2, 4), prediction=prediction)
    windows = _windows(data, cfg)
    norms = windows.fit_normalizers()
    model = TrajectoryModel(ModelConfig(env=env, obs_dim=data.observations.shape[1], act_dim=data.actions.shape[1],
                                        horizon=cfg.horizon, history=cfg.history, denoiser=cfg.denoiser,
                                        prediction=prediction), norms)
    dyn = model.dynamics
    ema = AveragedModel(dyn, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay))
    opt = torch.optim.AdamW(dyn.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        b = windows.sample(cfg.batch_size, norms, gen)
        loss = dyn.loss(b["context"], b["actions"], b["deltas"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update_parameters(dyn)
    dyn.load_state_dict(ema.module.state_dict())
    model.eval()
    return model, loss.item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", required=True, choices=("halfcheetah", "hopper", "walker2d"))
    ap.add_argument("--work", required=True)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--targets", default=",".join(PREDICTIONS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(args.work)
    data = load_dataset(work / f"{args.env}-medium.h5")
    held = load_dataset(work / f"{args.env}-heldout.h5")
    single, _ = mbop.load(work / "ck-mbop-medium", env=args.env)
    out = {"date": date.today().isoformat(), "env": args.env, "steps": args.steps, "targets": {}}
    for prediction in args.targets.split(","):
        t0 = time.perf_counter()
        model, last = train_dynamics(data, args.env, prediction, args.steps, args.seed)
        r = prediction_errors(model, single, held, rows=512, seed=args.seed, dynamics_steps=10)
        out["targets"][prediction] = {"error_by_k": r["dmpc"]["mean"], "last_loss": last,
                                      "seconds": round(time.perf_counter() - t0, 1)}
        out["mbop_rolled_out"] = r["mbop"]["mean"]
        print(prediction, [round(x, 4) for x in r["dmpc"]["mean"]], flush=True)
    print("mbop", [round(x, 4) for x in out["mbop_rolled_out"]])
    write_json(args.json, out)


if __name__ == "__main__":
    main()
