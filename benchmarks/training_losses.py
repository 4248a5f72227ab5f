"""Which training loss should learned backward models default to?

Trains LearnedJacobian and LearnedVJP online on a smooth nonlinear map with
each loss of blackgrad.estimators.learned.TRAINING_LOSSES, and a structured
ConstantJacobian started at a wrong scale (restore-jacobian's initial_messup), and
prints the final gradient cosine and relative error to the exact VJP (mean
over seeds).  Run: .venv/bin/python benchmarks/training_losses.py
"""

import statistics

import torch

import blackgrad as bg
from blackgrad.estimators import LearnedJacobian, LearnedVJP
from blackgrad.nets import ConstantJacobian

torch.set_num_threads(1)
N, M, STEPS, BATCH, SEEDS = 8, 6, 200, 32, (0, 1, 2)


def problem(seed):
    gen = torch.Generator().manual_seed(100 + seed)
    w = torch.randn(M, N, generator=gen) / N**0.5
    a = torch.randn(M, N, generator=gen)
    return (lambda x: torch.tanh(x @ w.T) + 0.3 * torch.sin(2 * x[:, :M])), (lambda x: x @ a.T), a


def final_fidelity(fun, estimator, seed):
    torch.manual_seed(seed)
    box = bg.BlackBox(fun, estimator)
    cosines, errors = [], []
    for _ in range(STEPS):
        x = torch.randn(BATCH, N, requires_grad=True)
        y = box(x)
        g = torch.randn_like(y)
        y.backward(g)
        xr = x.detach().requires_grad_(True)
        (exact,) = torch.autograd.grad(fun(xr), xr, g)
        cosines.append(torch.nn.functional.cosine_similarity(x.grad, exact).mean().item())
        errors.append(((x.grad - exact).norm(dim=1) / exact.norm(dim=1)).mean().item())
    return statistics.fmean(cosines[-20:]), statistics.fmean(errors[-20:])


def main():
    rows = []
    for loss in ("mse", "cosine", "mse+cosine"):
        for name, make in [
            ("LearnedJacobian, smooth map", lambda s: LearnedJacobian(hidden=(64, 64), lr=3e-3, loss=loss, seed=s)),
            ("LearnedVJP, smooth map", lambda s: LearnedVJP(rank=32, hidden=(64, 64), lr=3e-3, loss=loss, seed=s)),
            ("ConstantJacobian from 10 x true, linear map", None),
        ]:
            results = []
            for seed in SEEDS:
                smooth, linear, a = problem(seed)
                if make is None:
                    model = ConstantJacobian(M, N)
                    with torch.no_grad():
                        model.matrix.copy_(10 * a)  # initial_messup = 10
                    results.append(final_fidelity(linear, LearnedJacobian(model=model, lr=0.05, loss=loss, seed=seed), seed))
                else:
                    results.append(final_fidelity(smooth, make(seed), seed))
            cosine = statistics.fmean(r[0] for r in results)
            error = statistics.fmean(r[1] for r in results)
            rows.append((name, loss, cosine, error))
    print(f"steps {STEPS}, batch {BATCH}, one probe per sample, seeds {list(SEEDS)}; last 20 steps averaged")
    print("| model | loss | VJP cosine | relative VJP error |")
    print("|---|---|---|---|")
    for name, loss, cosine, error in sorted(rows):
        print(f"| {name} | {loss} | {cosine:.4f} | {error:.3f} |")


if __name__ == "__main__":
    main()
