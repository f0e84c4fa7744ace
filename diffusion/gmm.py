"""Gaussian mixtures: data whose noisy densities, and so the ideal denoiser, are known exactly.

For p(x0) = sum_k w_k N(mu_k, C_k) and x = x0 + sigma eps,

    p(x) = sum_k w_k N(x; mu_k, C_k + sigma^2 I),
    E[x0 | x] = sum_k r_k(x) (mu_k + C_k (C_k + sigma^2 I)^-1 (x - mu_k)),

with r_k(x) the posterior weight of component k.  Driving a sampler with this exact
denoiser isolates the sampler's own error from any network's.
"""

from __future__ import annotations

import math

import torch


class GaussianMixture:
    def __init__(self, means, covs, weights):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.covs = torch.as_tensor(covs, dtype=torch.float64)
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        k, dim = self.means.shape
        if self.covs.shape != (k, dim, dim) or self.weights.shape != (k,):
            raise ValueError(f"inconsistent mixture: means {tuple(self.means.shape)}, covs "
                             f"{tuple(self.covs.shape)}, weights {tuple(self.weights.shape)}")
        if not math.isclose(float(self.weights.sum()), 1.0, rel_tol=1e-9):
            raise ValueError(f"weights must sum to 1, got {float(self.weights.sum())}")
        self.dim = dim

    @classmethod
    def ring(cls, modes: int = 8, radius: float = 2.0, std: float = 0.15):
        """`modes` isotropic components of equal weight on a circle: the classic 2-D test set."""
        angle = torch.arange(modes, dtype=torch.float64) * 2 * math.pi / modes
        means = radius * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
        covs = (std**2) * torch.eye(2, dtype=torch.float64).expand(modes, 2, 2).clone()
        return cls(means, covs, torch.full((modes,), 1.0 / modes, dtype=torch.float64))

    @property
    def mean(self) -> torch.Tensor:
        return self.weights @ self.means

    @property
    def cov(self) -> torch.Tensor:
        centred = self.means - self.mean
        within = torch.einsum("k,kij->ij", self.weights, self.covs)
        between = torch.einsum("k,ki,kj->ij", self.weights, centred, centred)
        return within + between

    def sample(self, n: int, generator: torch.Generator | None = None):
        """(x0, component index) for n draws."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        chol = torch.linalg.cholesky(self.covs)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[comp] + torch.einsum("nij,nj->ni", chol[comp], z), comp

    def _noisy_log_joint(self, x, sigma):
        """log w_k + log N(x; mu_k, C_k + sigma^2 I) for every k, and the solved systems."""
        eye = torch.eye(self.dim, dtype=torch.float64, device=x.device)
        sigma = sigma.reshape(-1, 1, 1, 1) if sigma.ndim else sigma.reshape(1, 1, 1, 1)
        cov = self.covs.to(x.device)[None] + sigma**2 * eye  # (n or 1, k, d, d)
        diff = x[:, None, :] - self.means.to(x.device)[None]  # (n, k, d)
        chol = torch.linalg.cholesky(cov)
        sol = torch.cholesky_solve(diff.unsqueeze(-1), chol).squeeze(-1)  # (C+s^2)^-1 (x-mu)
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        maha = (diff * sol).sum(-1)
        log_joint = (torch.log(self.weights.to(x.device)) - 0.5 * (maha + logdet
                                                                   + self.dim * math.log(2 * math.pi)))
        return log_joint, sol

    def log_prob(self, x, sigma=0.0):
        x = x.to(torch.float64)
        log_joint, _ = self._noisy_log_joint(x, torch.as_tensor(sigma, dtype=torch.float64))
        return torch.logsumexp(log_joint, -1)

    def responsibilities(self, x, sigma=0.0):
        x = x.to(torch.float64)
        log_joint, _ = self._noisy_log_joint(x, torch.as_tensor(sigma, dtype=torch.float64))
        return torch.softmax(log_joint, -1)

    def denoiser(self, x, sigma):
        """The exact E[x0 | x_sigma]; same call signature as objectives.Denoiser."""
        dtype = x.dtype
        x = x.to(torch.float64)
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
        if sigma.ndim and bool((sigma == sigma.reshape(-1)[0]).all()):
            sigma = sigma.reshape(-1)[0]  # one noise level: factorise once per component
        log_joint, sol = self._noisy_log_joint(x, sigma)
        r = torch.softmax(log_joint, -1)  # (n, k)
        posterior_means = self.means.to(x.device)[None] + torch.einsum(
            "kij,nkj->nki", self.covs.to(x.device), sol)
        return torch.einsum("nk,nki->ni", r, posterior_means).to(dtype)

    def assign(self, x):
        """The most likely component of each sample (for mode-coverage checks)."""
        return self.responsibilities(x).argmax(-1)
