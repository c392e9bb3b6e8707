"""Does SSR's objective rank the candidates the way the real environment would?

Drive episodes with the diffusion proposal alone (first action of one sample, replan every step). Every `--every`
steps, stop and probe the state: sample N candidate action sequences as SSR does, score each with every objective
under test from the dynamics model's predicted states, then execute each candidate for real from a copy of the
simulator's state (MuJoCo qpos/qvel) and follow it with the proposal alone for `--continue-steps` more steps. The
real return over those F + M steps, G, is the yardstick: a good objective puts its argmax on a candidate with a high
G. All candidates of a probe continue under common random numbers (the same starting noise per step), so their Gs
differ by their first F actions, not by the sampler.

Per objective, averaged over probes: Spearman's rank correlation with G, and the gain of its pick over an average
candidate, G[argmax] - mean(G), also as a fraction of the best possible gain max(G) - mean(G). The objectives:
J with the value weighted 0 (rewards only), 0.1, 0.3, 1 (SSR's default), 3, the value alone, and the same J on the
*real* states after the F steps (what a perfect dynamics model would give: separates dynamics from value error).

    OMP_NUM_THREADS=1 python benchmarks/dmpc_ranking.py --env hopper --ckpt runs/dmpc/hopper/ck-dmpc-medium-x0-8k \\
        --json benchmarks/results/dmpc/locomotion/hopper-medium/ranking_x0_8k.json
"""

from __future__ import annotations

import argparse
import time
from datetime import date

import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm import tqdm

from paperclub.atomic import write_json
from paperclub.dmpc.checkpoint import load
from paperclub.dmpc.envs import make_env
from paperclub.dmpc.models import context_tokens
from paperclub.dmpc.planner import History, PlannerConfig, SSRPlanner
from paperclub.dmpc.rewards import healthy, task_reward

WEIGHTS = (0.0, 0.1, 0.3, 1.0, 3.0)


class ProposalPolicy:
    """The proposal's first action, for B rows at once; every row starts from the same noise (common random
    numbers), drawn fresh per call."""

    def __init__(self, model, steps: int, low, high, seed: int):
        self.model, self.steps = model, steps
        self.low, self.high = torch.as_tensor(low, dtype=torch.float32), torch.as_tensor(high, dtype=torch.float32)
        self.generator = torch.Generator().manual_seed(seed)

    def sequences(self, hists: list[History]) -> torch.Tensor:
        states, acts = zip(*(h.tensors() for h in hists), strict=True)
        context = context_tokens(torch.stack(states), torch.stack(acts), self.model.norms)
        cfg = self.model.cfg
        shape = (len(hists), cfg.horizon, cfg.act_dim)
        noise = torch.randn((1, *shape[1:]), generator=self.generator).expand(shape)
        x = self.model.proposal.diffusion.sample(shape, context, steps=self.steps, noise=noise.contiguous())
        return self.model.norms.act.unnormalize(x).clamp(self.low, self.high)

    def act(self, hists: list[History]) -> np.ndarray:
        return self.sequences(hists)[:, 0].numpy()


def probe(env_name, env, hist, model, policy, pool, args, generator) -> dict:
    """Score N candidates at the env's current state with the model, then measure them for real."""
    n, cfg = args.candidates, model.cfg
    qpos, qvel = env.unwrapped.data.qpos.copy(), env.unwrapped.data.qvel.copy()
    states, acts = hist.tensors()
    planner = SSRPlanner(model, task_reward(env_name), PlannerConfig(
        candidates=n, proposal_steps=args.proposal_steps, dynamics_steps=args.dynamics_steps,
        low=tuple(policy.low.tolist()), high=tuple(policy.high.tolist())))
    planner.generator = generator  # the probe's one random stream
    proposals, (predicted,) = planner.candidates(states[None], acts[None])
    reward = planner.reward
    r_hat = reward(predicted, proposals).sum(1)
    ok_hat = healthy(env_name, predicted).all(1).float()
    context = planner.context(states[None], acts[None])
    v_hat = model.terminal_value(context, proposals, predicted)

    # the same candidates for real: F steps of their own actions, then the proposal alone
    hists = [hist.copy() for _ in range(n)]
    for e in pool:
        e.reset()
        e.unwrapped.set_state(qpos, qvel)
    real_r = np.zeros((n, cfg.horizon))
    real_states = np.zeros((n, cfg.horizon, cfg.obs_dim))
    done = np.zeros(n, dtype=bool)
    for k in range(cfg.horizon):
        for i, e in enumerate(pool):
            if done[i]:
                continue
            a = proposals[i, k].numpy()
            obs, r, term, _, _ = e.step(a)
            real_r[i, k], real_states[i, k] = r, obs
            hists[i].push(a, obs)
            done[i] = term
        # a terminated row keeps its last state for the value (it is masked out below)
        real_states[done, k:] = real_states[done, k:k + 1]
    g = real_r.sum(1)
    ended_in_f = done.copy()
    for _ in range(args.continue_steps):
        live = np.flatnonzero(~done)
        if not len(live):
            break
        actions = policy.act([hists[i] for i in live])
        for i, a in zip(live, actions, strict=True):
            obs, r, term, _, _ = pool[i].step(a)
            g[i] += r
            hists[i].push(a, obs)
            done[i] = term
    real = torch.as_tensor(real_states, dtype=torch.float32)
    r_real = torch.as_tensor(real_r.sum(1), dtype=torch.float32)
    ok_real = torch.as_tensor(~ended_in_f, dtype=torch.float32)
    v_real = model.terminal_value(context, proposals, real)
    scorers = {f"J(w={w:g})": r_hat + w * ok_hat * v_hat for w in WEIGHTS}
    scorers["value alone"] = ok_hat * v_hat
    scorers["J(w=1), real states"] = r_real + ok_real * v_real
    scorers["rewards, real states"] = r_real
    out = {"G_mean": float(g.mean()), "G_std": float(g.std()), "G_max": float(g.max()),
           "rewards_hat_std": float(r_hat.std()), "value_hat_std": float(v_hat.std()),
           "corr_rewards_hat_real": _rho(r_hat.numpy(), r_real.numpy()),
           "corr_value_hat_real_states": _rho(v_hat.numpy(), v_real.numpy()),
           "healthy_hat_vs_real_agree": float((ok_hat.numpy() == ok_real.numpy()).mean()),
           "scorers": {}}
    for name, s in scorers.items():
        s = s.numpy()
        pick = int(np.argmax(s))
        out["scorers"][name] = {"rho": _rho(s, g), "gain": float(g[pick] - g.mean()),
                                "best_gain": float(g.max() - g.mean())}
    return out


def _rho(a: np.ndarray, b: np.ndarray) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def summarize(probes: list[dict]) -> dict:
    names = probes[0]["scorers"]
    summary = {}
    for name in names:
        rho = np.array([p["scorers"][name]["rho"] for p in probes])
        gain = np.array([p["scorers"][name]["gain"] for p in probes])
        best = np.array([p["scorers"][name]["best_gain"] for p in probes])
        rho = rho[~np.isnan(rho)]
        summary[name] = {"rho_mean": float(rho.mean()), "rho_stderr": float(rho.std(ddof=1) / np.sqrt(len(rho))),
                         "gain_mean": float(gain.mean()), "gain_stderr": float(gain.std(ddof=1) / np.sqrt(len(gain))),
                         "gain_fraction_of_best": float(gain.sum() / max(best.sum(), 1e-9))}
    for key in ("corr_rewards_hat_real", "corr_value_hat_real_states", "healthy_hat_vs_real_agree",
                "rewards_hat_std", "value_hat_std", "G_std"):
        v = np.array([p[key] for p in probes], dtype=float)
        summary[key] = float(np.nanmean(v))
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", required=True, choices=("halfcheetah", "hopper", "walker2d"))
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--every", type=int, default=50, help="probe every this many steps of an episode")
    ap.add_argument("--candidates", type=int, default=64)
    ap.add_argument("--continue-steps", type=int, default=100)
    ap.add_argument("--proposal-steps", type=int, default=10)
    ap.add_argument("--dynamics-steps", type=int, default=5)
    ap.add_argument("--max-steps", type=int, default=1000)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, _ = load(args.ckpt, env=args.env)
    pool = [make_env(args.env) for _ in range(args.candidates)]
    low, high = pool[0].action_space.low, pool[0].action_space.high
    policy = ProposalPolicy(model, args.proposal_steps, low, high, args.seed)
    generator = torch.Generator().manual_seed(args.seed + 1)
    probes, lengths = [], []
    t0 = time.perf_counter()
    for ep in tqdm(range(args.episodes), desc="episodes"):
        env = make_env(args.env)
        obs, _ = env.reset(seed=args.seed + ep)
        hist = History(model.cfg.history, obs, len(low))
        for t in range(args.max_steps):
            if t % args.every == 0:
                probes.append({"episode": ep, "t": t,
                               **probe(args.env, env, hist, model, policy, pool, args, generator)})
            a = policy.act([hist])[0]
            obs, _, term, trunc, _ = env.step(a)
            hist.push(a, obs)
            if term or trunc:
                break
        lengths.append(t + 1)
    out = {"date": date.today().isoformat(), "env": args.env, "ckpt": args.ckpt, "args": vars(args),
           "episode_lengths": lengths, "probes_count": len(probes), "seconds": round(time.perf_counter() - t0, 1),
           "summary": summarize(probes), "probes": probes}
    write_json(args.json, out)
    for name, s in out["summary"].items():
        print(name, s if not isinstance(s, dict) else {k: round(v, 3) for k, v in s.items()})


if __name__ == "__main__":
    main()
