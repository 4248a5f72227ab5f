"""A Moore–Penrose secant Jacobian from probe pairs (dx, df)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Estimator, ProberLike, VJPQuery, _check_option, _make_generator, _steps_taken, check_positive


class LeastSquares(Estimator):
    """Least-squares VJP from secant pairs: solve ``dX w ≈ dF g`` for ``w = Jᵀg``.

    Around each forward point ``α`` the estimator probes ``P`` directions
    ``dx_1..dx_P`` (rows of a random orthonormal frame, scaled so each
    coordinate moves by about ``step``; a frame of its own for each sample, or
    one frame for the whole batch when θ is probed, so that θ probes share
    device calls) and observes ``df_p = f(α + dx_p) − f(α)``
    (``scheme="forward"``, reusing the forward output) or the central
    ``(f(α + dx_p) − f(α − dx_p)) / 2``.  Since ``gᵀ J dx_p ≈ gᵀ df_p``, the VJP
    ``w`` solves ``dX w = c`` with ``c_p = gᵀ df_p``:

    * ``P ≥ d`` probes: the least-squares solution ``(dXᵀdX)⁻¹ dXᵀ c``; with
      ``d`` probes on a linear map it is exact (as many samples as dimensions pin a
      linear map down).
    * ``P < d``: the ridge-regularised minimum-norm solution
      ``dXᵀ (dX dXᵀ + λI)⁻¹ c`` (the right pseudo-inverse): exact along
      the probed subspace, zero across it.

    ``neighbors=K`` adds, for free, the secants from each sample to its ``K``
    nearest neighbours in the forward batch (``α_b' − α_b``, ``y_b' − y_b``):
    data training evaluated anyway.  They are not local, so they help most on
    smooth, mildly nonlinear devices; ``probes=0`` with ``neighbors>0`` spends
    no probe at all.

    Cost per ``vjp``: ``P·B`` evaluations (forward) or ``2·P·B`` (central),
    with ``P = probes`` (default ``d``, the number of active coordinates).

    Args:
        probes: probe directions per sample, ``None`` for ``d``.
        step: per-coordinate perturbation size; default: the calibrated profile's, else from the dtype.
        scheme: ``"forward"`` or ``"central"``.
        neighbors: number of forward-batch neighbours used as extra secants.
        ridge: relative Tikhonov weight ``λ / mean(diag Gram)``; default
            ``100·eps`` of the dtype (negligible unless the pairs are degenerate).
        seed: seed of the estimator's own generator.
    """

    _repr_fields = ("probes", "step", "scheme", "neighbors", "ridge")

    def __init__(
        self,
        probes: int | None = None,
        step: float | None = None,
        scheme: str = "forward",
        neighbors: int = 0,
        ridge: float | None = None,
        seed: int | None = 0,
    ) -> None:
        if probes is not None and (isinstance(probes, bool) or not isinstance(probes, int) or probes < 0):
            raise ValueError(f"probes must be a non-negative int or None, got {probes!r}")
        if isinstance(neighbors, bool) or not isinstance(neighbors, int) or neighbors < 0:
            raise ValueError(f"neighbors must be a non-negative int, got {neighbors!r}")
        if probes == 0 and neighbors == 0:
            raise ValueError("LeastSquares needs probes > 0 or neighbors > 0 to see any secant")
        _check_option("scheme", scheme, ("forward", "central"))
        check_positive("step", step, allow_none=True)
        check_positive("ridge", ridge, allow_none=True)
        self.probes = probes
        self.step = step
        self.scheme = scheme
        self.neighbors = neighbors
        self.ridge = ridge
        self.generator = _make_generator(seed)

    def _n_probes(self, d: int) -> int:
        return d if self.probes is None else self.probes

    def vjp(self, prober: ProberLike, query: VJPQuery) -> Tensor:
        alpha, grad, index = query.by_column()
        k, batch = index.numel(), query.batch
        if k == 0:
            return grad
        central = self.scheme == "central"
        dx_parts, c_parts = [], []
        n_probes = self._n_probes(k)
        if n_probes > 0:
            h = self.probe_step(alpha.dtype, 2 if central else 1)
            shared = bool(query.shared[index].any())
            frame = self._frame(n_probes, k, 1 if shared else batch).to(alpha) * (h * k**0.5)  # (B or 1, P, k)
            frame = frame.expand(batch, -1, -1).transpose(0, 1)  # (P, B, k)
            # with θ probed, probe p moves θ alike in every row: its rows share a θ of their own
            group = torch.arange(n_probes, device=alpha.device).repeat_interleave(batch) if shared else None
            plus = alpha.expand(n_probes, batch, -1).clone()
            plus[:, :, index] += frame
            dx = _steps_taken(alpha[:, index], plus[:, :, index])  # (P, B, k)
            if central:
                minus = alpha.expand(n_probes, batch, -1).clone()
                minus[:, :, index] -= frame
                dx = _steps_taken(alpha[:, index], plus[:, :, index], minus[:, :, index]) / 2
                rows = torch.cat([plus, minus]).reshape(2 * n_probes * batch, -1)  # one request
                both = None if group is None else torch.arange(2 * n_probes, device=rows.device).repeat_interleave(batch)
                f_plus, f_minus = query.evaluate(prober, rows, both).reshape(2, n_probes, batch, -1)
                df = (f_plus - f_minus) / 2
            else:
                df = query.evaluate(prober, plus.reshape(n_probes * batch, -1), group).reshape(n_probes, batch, -1) - query.y
            dx_parts.append(dx.transpose(0, 1))
            c_parts.append(torch.einsum("pbm,bm->bp", df, query.grad_out))
        if self.neighbors > 0 and batch > 1:
            nb = self._nearest(alpha[:, index], min(self.neighbors, batch - 1))  # (B, K)
            dx_parts.append(alpha[:, index][nb] - alpha[:, index].unsqueeze(1))
            c_parts.append(torch.einsum("bkm,bm->bk", query.y[nb] - query.y.unsqueeze(1), query.grad_out))
        if not dx_parts:
            raise ValueError("LeastSquares(probes=0) needs a batch of at least 2 samples to form neighbour secants")
        dx, c = torch.cat(dx_parts, 1), torch.cat(c_parts, 1)
        # Weigh every secant alike: a long (non-local) neighbour secant must not dominate by |dx|².
        length = dx.norm(dim=2, keepdim=True).clamp(min=torch.finfo(dx.dtype).tiny)
        grad[:, index] = self._solve(dx / length, c / length.squeeze(2))
        return grad

    def _frame(self, count: int, k: int, frames: int) -> Tensor:
        """``frames`` sets of ``count`` rows of stacked random orthonormal ``k × k`` frames."""
        blocks = []
        while sum(b.shape[1] for b in blocks) < count:
            q, _ = torch.linalg.qr(torch.randn(frames, k, k, generator=self.generator, dtype=torch.float64))
            blocks.append(q.transpose(1, 2))
        return torch.cat(blocks, 1)[:, :count]

    @staticmethod
    def _nearest(points: Tensor, count: int) -> Tensor:
        distance = torch.cdist(points, points)
        distance.fill_diagonal_(float("inf"))
        return distance.topk(count, largest=False).indices

    def _solve(self, dx: Tensor, c: Tensor) -> Tensor:
        """Batched ``argmin_w |dx w − c|`` (min-norm when underdetermined); dx (B,P,k), c (B,P)."""
        n_pairs, k = dx.shape[1], dx.shape[2]
        ridge = self.ridge if self.ridge is not None else 100 * torch.finfo(dx.dtype).eps
        if n_pairs >= k:
            gram = dx.transpose(1, 2) @ dx
            gram = gram + ridge * _mean_diag(gram) * torch.eye(k, dtype=dx.dtype, device=dx.device)
            return torch.linalg.solve(gram, (dx.transpose(1, 2) @ c.unsqueeze(-1))).squeeze(-1)
        gram = dx @ dx.transpose(1, 2)
        gram = gram + ridge * _mean_diag(gram) * torch.eye(n_pairs, dtype=dx.dtype, device=dx.device)
        return (dx.transpose(1, 2) @ torch.linalg.solve(gram, c.unsqueeze(-1))).squeeze(-1)

    def probe_cost(self, d: int, m: int, batch: int) -> int:
        return (2 if self.scheme == "central" else 1) * self._n_probes(d) * batch if d > 0 else 0


def _mean_diag(gram: Tensor) -> Tensor:
    return gram.diagonal(dim1=1, dim2=2).mean(-1).clamp(min=torch.finfo(gram.dtype).tiny)[:, None, None]
