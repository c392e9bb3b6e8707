"""Diffusion Model Predictive Control (Zhou et al., arXiv 2410.05364): a multi-step diffusion action proposal and a
multi-step diffusion dynamics model trained on offline trajectories, a learned terminal value, and a
sample-score-rank (SSR) planner whose reward is any Python callable on predicted states and actions."""
