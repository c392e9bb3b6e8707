"""Compounding error: D-MPC's multi-step diffusion dynamics against MBOP's single-step ensemble rolled out, on
held-out trajectories, at every horizon k = 1..F.

At each sampled held-out step t (with F real steps after it), both models get s_t (and D-MPC its history) and the
F actions the data really took, and predict s_{t+1..t+F}. The error at horizon k is the root mean square, over
state dimensions, of (predicted - true) / std, with std the per-dimension state std of D-MPC's training data (so
that every dimension counts alike), averaged over the sampled steps (with its standard error). The single-step
model is rolled out by feeding back the ensemble's mean next state. "copy" (predict s_{t+k} = s_t) is the
reference a useful model must beat.

Like against like: the ensemble mean is a point estimate, while one diffusion sample also carries the model's
spread (for a model whose samples scatter around the truth with variance v, a sample's expected squared error is
the mean's plus v). So with `samples` = S > 1 the result also holds "dmpc_mean" (the mean of S samples per start,
the diffusion model's own point estimate) to set beside "mbop", and "mbop_member" (member 0 alone, rolled out on its
own predictions, one sample of the ensemble) to set beside "dmpc" (one sample, what each planner candidate sees).
"""

from __future__ import annotations

import numpy as np
import torch

from paperclub.atomic import atomic_path
from paperclub.dmpc.dataset import Dataset
from paperclub.dmpc.mbop import Mbop
from paperclub.dmpc.models import TrajectoryModel
from paperclub.dmpc.windows import Windows
from paperclub.errors import UserError


def _mean_se(per_row: torch.Tensor) -> tuple[list[float], list[float]]:
    """per_row (R, F) -> the mean and standard error over rows at each horizon."""
    x = per_row.double()
    se = x.std(0, unbiased=True) / np.sqrt(len(x)) if len(x) > 1 else torch.zeros(x.shape[1])
    return x.mean(0).tolist(), se.tolist()


@torch.no_grad()
def prediction_errors(dmpc: TrajectoryModel, mbop: Mbop, data: Dataset, rows: int = 512, seed: int = 0,
                      dynamics_steps: int | None = None, samples: int = 1) -> dict:
    if dmpc.cfg.env != mbop.cfg.env or dmpc.cfg.env != data.env:
        raise UserError(f"the D-MPC checkpoint ({dmpc.cfg.env}), the MBOP checkpoint ({mbop.cfg.env}) and the data "
                        f"({data.env}) must be for one env")
    horizon, history = dmpc.cfg.horizon, dmpc.cfg.history
    try:
        w = Windows(data, horizon, history, discount=0.99)
    except ValueError as e:
        raise UserError(f"held-out data: {e}") from e
    rng = np.random.default_rng(seed)
    picked = torch.as_tensor(np.sort(rng.choice(len(w), size=min(rows, len(w)), replace=False)))
    t = w.valid[picked]
    batch = w.batch(t, dmpc.norms)
    future = t[:, None] + torch.arange(horizon)
    actions, true, start = w.act[future], w.next_obs[future], w.obs[t]
    gen = torch.Generator().manual_seed(seed)
    predicted = {"dmpc": dmpc.predict(batch["context"], start, actions, dynamics_steps, gen),
                 "mbop": mbop.rollout(start, actions),
                 "copy": start[:, None].expand_as(true)}
    if samples > 1:
        # samples 2..S for every row at once (sample 1 is "dmpc" above); their mean with it is D-MPC's point estimate
        r = len(t)
        more = dmpc.predict(batch["context"].repeat(samples - 1, 1, 1), start.repeat(samples - 1, 1),
                            actions.repeat(samples - 1, 1, 1), dynamics_steps, gen)
        stacked = torch.cat([predicted["dmpc"][None], more.view(samples - 1, r, *more.shape[1:])])
        predicted["dmpc_mean"] = stacked.mean(0)
        predicted["mbop_member"] = mbop.rollout(start, actions, member=0)
    std = dmpc.norms.obs.std
    out = {"env": data.env, "horizon": list(range(1, horizon + 1)), "rows": len(t), "seed": seed,
           "dynamics_steps": dynamics_steps or dmpc.cfg.dynamics_steps, "mbop_members": mbop.cfg.members,
           "samples": samples,
           "error": "RMS over state dimensions of (predicted - true) / training state std; mean and s.e. over rows"}
    for name, pred in predicted.items():
        per_row = (((pred - true) / std) ** 2).mean(-1).sqrt()  # (R, F)
        mean, se = _mean_se(per_row)
        out[name] = {"mean": mean, "stderr": se}
    return out


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    samples = result.get("samples", 1)
    labels = {"dmpc": "D-MPC multi-step diffusion, one sample", "dmpc_mean": f"D-MPC, mean of {samples} samples",
              "mbop": "MBOP single-step ensemble mean, rolled out", "mbop_member": "MBOP one member, rolled out",
              "copy": "copy s_t"}
    for name, label in labels.items():
        if name not in result:
            continue
        mean, se = np.array(result[name]["mean"]), np.array(result[name]["stderr"])
        ax.errorbar(result["horizon"], mean, yerr=se, label=label, marker="o", capsize=3,
                    linestyle=":" if name == "copy" else "-")
    ax.set_xlabel("horizon k (steps ahead)")
    ax.set_ylabel("state error (RMS, in training std)")
    ax.set_title(f"{result['env']}: held-out prediction error ({result['rows']} starts)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
