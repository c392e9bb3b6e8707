"""The paper's ablations as SSR planners with one part swapped for MBOP's (same planner, same objective, same value):

- single-step dynamics: the candidates' states come from MBOP's single-step ensemble rolled out F times (the
  ensemble's mean next state fed back) instead of D-MPC's multi-step diffusion dynamics;
- non-diffusion proposal: the candidates' actions come from MBOP's MLP prior with Gaussian noise (sigma action
  stds), rolled out through the single-step ensemble to get the states the prior conditions on, instead of D-MPC's
  diffusion proposal.

`Hybrid` has the interface SSRPlanner uses (cfg, norms, propose, predict, terminal_value), so the planner itself
is unchanged. The terminal value is always D-MPC's.
"""

from __future__ import annotations

import torch

from paperclub.dmpc.mbop import Mbop
from paperclub.dmpc.models import TrajectoryModel
from paperclub.errors import UserError

PROPOSALS = ("diffusion", "mlp")
DYNAMICS = ("diffusion", "single-step")


class Hybrid:
    def __init__(self, dmpc: TrajectoryModel, mbop: Mbop | None, proposal: str = "diffusion",
                 dynamics: str = "diffusion", sigma: float = 0.2):
        if proposal not in PROPOSALS or dynamics not in DYNAMICS:
            raise UserError(f"--proposal {proposal} / --dynamics {dynamics}: choose a proposal of "
                            f"{', '.join(PROPOSALS)} and dynamics of {', '.join(DYNAMICS)}")
        if mbop is None and (proposal, dynamics) != ("diffusion", "diffusion"):
            raise UserError("--proposal mlp and --dynamics single-step take MBOP's parts: pass --mbop DIR "
                            "(from `paperclub dmpc train-mbop`)")
        if mbop is not None and mbop.cfg.env != dmpc.cfg.env:
            raise UserError(f"the MBOP checkpoint is for env {mbop.cfg.env}, the D-MPC one for {dmpc.cfg.env}")
        self.dmpc, self.mbop, self.proposal, self.dynamics, self.sigma = dmpc, mbop, proposal, dynamics, sigma
        self.cfg, self.norms = dmpc.cfg, dmpc.norms

    def _current(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """s_t and a_{t-1} (zero without history) in env units, read back from D-MPC's context tokens."""
        s_dim = self.cfg.obs_dim
        state = self.norms.obs.unnormalize(context[:, -1, :s_dim])
        if context.shape[1] > 1:
            prev = self.norms.act.unnormalize(context[:, -2, s_dim:])
        else:
            prev = torch.zeros(context.shape[0], self.cfg.act_dim)
        return state, prev

    @torch.no_grad()
    def propose(self, context: torch.Tensor, steps: int | None = None, generator=None) -> torch.Tensor:
        if self.proposal == "diffusion":
            return self.dmpc.propose(context, steps, generator)
        m = self.mbop
        s, prev = self._current(context)
        actions = []
        for _ in range(self.cfg.horizon):
            a = m.prior_action(s, prev)
            a = a + self.sigma * m.norms.act.std * torch.randn(a.shape, generator=generator)
            actions.append(a)
            nxt, _ = m.step(s.expand(m.cfg.members, *s.shape), a.expand(m.cfg.members, *a.shape))
            s, prev = nxt.mean(0), a
        return torch.stack(actions, dim=1)

    @torch.no_grad()
    def predict(self, context: torch.Tensor, state: torch.Tensor, actions: torch.Tensor, steps: int | None = None,
                generator=None, noise: torch.Tensor | None = None) -> torch.Tensor:
        if self.dynamics == "diffusion":
            return self.dmpc.predict(context, state, actions, steps, generator, noise)
        return self.mbop.rollout(state, actions)

    @torch.no_grad()
    def terminal_value(self, context: torch.Tensor, actions: torch.Tensor, states: torch.Tensor,
                       pessimism: float = 0.0) -> torch.Tensor:
        return self.dmpc.terminal_value(context, actions, states, pessimism)
