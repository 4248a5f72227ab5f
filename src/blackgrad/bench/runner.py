"""Train one (task, method, seed) and measure it: accuracy, evaluations, gradient cosine, time."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor, nn

from .methods import METHODS, Method
from .data import Data
from .model import HybridNet
from .tasks import Task

#: measure the gradient cosine every this many training steps
COSINE_EVERY = 5


def accuracy(model: HybridNet, x: Tensor, y: Tensor) -> float:
    """Test accuracy; the evaluations it spends are left out of the training ledger."""
    saved = [box.calls.as_dict() for box in model.boxes]
    training = model.training
    model.eval()
    with torch.no_grad():
        predicted = model(x).argmax(1)
    model.train(training)
    for box, state in zip(model.boxes, saved):
        box.calls.load_dict(state)
    return (predicted == y).float().mean().item()


def _cosines(model: HybridNet) -> float | None:
    """Mean cosine between each box's estimated input gradient and the exact VJP there."""
    values = []
    for (u, h), box, device in zip(model.recorded, model.boxes, model.devices):
        if u.grad is None or h.grad is None:
            continue
        theta = None if box.params is None else box.params.detach()
        exact, _ = device.exact_vjp(u.detach(), theta, h.grad)
        keep = (exact.norm(dim=1) > 0) & (u.grad.norm(dim=1) > 0)
        if keep.any():
            values.append(nn.functional.cosine_similarity(u.grad[keep], exact[keep], dim=1).mean().item())
    return sum(values) / len(values) if values else None


def build(task: Task, method: Method, data: Data, seed: int) -> HybridNet:
    torch.manual_seed(seed)
    devices = [task.device(seed * 100 + layer) for layer in range(task.layers)]
    estimators = []
    for layer, device in enumerate(devices):
        # readout-only and CMA-ES never backpropagate through a box; any estimator will do.
        # A make that returns None leaves the box to BlackBox's own default estimator.
        make = method.make if method.make is not None else METHODS["exact"].make
        estimators.append(make(device, task, seed * 100 + layer))
    return HybridNet(data.n_features, data.n_classes, devices, estimators, normalize=task.normalize)


def _pretrain(model: HybridNet, samples: int, epochs: int, seed: int) -> None:
    """Fit each box's twin on ``samples`` uniform inputs in the device range [-1, 1]."""
    generator = torch.Generator().manual_seed(seed + 7)
    for box, device in zip(model.boxes, model.devices):
        x = torch.rand(samples, device.in_features, generator=generator) * 2 - 1
        box.pretrain(x, epochs=epochs)


def run_one(task: Task, method_name: str, seed: int, data: Data, epochs: int) -> dict[str, Any]:
    """Train and measure; returns a JSON-ready record."""
    method = METHODS[method_name]
    model = build(task, method, data, seed)
    n_train = data.x_train.shape[0]
    samples_seen = epochs * n_train
    start = time.perf_counter()
    if method.pretrain:
        _pretrain(model, int(method.pretrain * samples_seen), 5 if epochs <= task.quick_epochs else task.pretrain_epochs, seed)
    curve: list[tuple[float, float]] = []
    cosines: list[tuple[int, float]] = []
    if method.kind == "cma":
        _train_cma(task, model, data, epochs, seed, curve)
    else:
        if method.kind == "readout":
            # reservoir computing: the encoders and device θ stay at their random start, and
            # without requires_grad no gradient is asked of the devices at all
            for parameter in model.parameters():
                parameter.requires_grad_(False)
            model.readout.requires_grad_(True)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(trainable, lr=task.lr)
        generator = torch.Generator().manual_seed(seed)
        step = 0
        for _ in range(epochs):
            order = torch.randperm(n_train, generator=generator)
            for begin in range(0, n_train, task.batch_size):
                index = order[begin : begin + task.batch_size]
                record = method.kind == "gradient" and step % COSINE_EVERY == 0
                logits = model(data.x_train[index], record=record)
                loss = nn.functional.cross_entropy(logits, data.y_train[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if record and (value := _cosines(model)) is not None:
                    cosines.append((step, value))
                step += 1
            curve.append((model.evaluations() / n_train, accuracy(model, data.x_test, data.y_test)))
    wall = time.perf_counter() - start
    return {
        "task": task.name,
        "method": method.name,
        "seed": seed,
        "accuracy": curve[-1][1],
        "evaluations_per_sample": model.evaluations() / samples_seen,
        "evaluations": model.evaluations(),
        "cosine": sum(c for _, c in cosines) / len(cosines) if cosines else None,
        "cosine_curve": cosines,
        "curve": curve,
        "wall_seconds": wall,
        # the class that supplied the backward (for the defaults section's BlackBox default)
        "estimator": _describe(model.boxes[0].estimator),
        # a learned estimator's own running score of its VJP on probe rows it had not trained on
        "fidelity": _fidelity(model),
    }


def _fidelity(model: HybridNet) -> float | None:
    """Mean over the boxes of the estimator's final input fidelity cosine; None if it keeps none."""
    values = [box.fidelity.cosine for box in model.boxes if box.fidelity is not None]
    return sum(values) / len(values) if values else None


def _describe(estimator: Any) -> str:
    """``Unbiased(DigitalTwin)``, ``FiniteDifference``: the class, and an inner estimator's."""
    inner = getattr(estimator, "inner", None)
    return type(estimator).__name__ + (f"({_describe(inner)})" if inner is not None else "")


def _train_cma(task: Task, model: HybridNet, data: Data, epochs: int, seed: int, curve: list) -> None:
    """Separable CMA-ES on every digital parameter; the device θ stays at its default.

    Budget: as many device evaluations as 10 per training sample per epoch
    (the cost of SPSA with ~5 antithetic directions); each candidate is scored
    by cross-entropy on one minibatch shared by the generation, of at most
    256 samples and small enough for at least 50 generations.  Candidates are
    scored in training mode, so batch norm (the deep task) uses each
    candidate's own minibatch statistics; before each test the running
    statistics are re-estimated for the current mean on one more minibatch
    (device evaluations counted like any other).
    """
    import cma

    params = model.digital_parameters()
    vector = nn.utils.parameters_to_vector(params).detach()
    n_train = data.x_train.shape[0]
    budget = 10 * epochs * n_train
    strategy = cma.CMAEvolutionStrategy(
        vector.double().numpy(), 0.05, {"CMA_diagonal": True, "seed": seed + 1, "verbose": -9}
    )
    # a forward pass of one sample costs one evaluation per physical layer
    layers = len(model.boxes)
    # at least 50 generations within the budget, minibatches of at most 256
    batch = max(8, min(256, n_train, budget // (50 * strategy.popsize * layers)))
    generation_cost = strategy.popsize * batch * layers
    calibration_cost = batch * layers if any(isinstance(m, nn.BatchNorm1d) for m in model.modules()) else 0
    generator = torch.Generator().manual_seed(seed)
    per_epoch = budget // epochs
    next_mark = per_epoch
    # Scoring runs the model in training mode; its boxes' estimator (exact, unused: CMA-ES
    # asks for no gradient) learns nothing from the forward passes it observes.
    index = torch.arange(batch)  # the last generation's minibatch, also used to calibrate batch norm
    while model.evaluations() + generation_cost + 2 * calibration_cost <= budget:
        index = torch.randint(0, n_train, (batch,), generator=generator)
        candidates = strategy.ask()
        scores = []
        for candidate in candidates:
            nn.utils.vector_to_parameters(torch.as_tensor(candidate, dtype=vector.dtype), params)
            with torch.no_grad():
                scores.append(nn.functional.cross_entropy(model(data.x_train[index]), data.y_train[index]).item())
        strategy.tell(candidates, scores)
        if model.evaluations() >= next_mark:
            nn.utils.vector_to_parameters(torch.as_tensor(strategy.result.xfavorite, dtype=vector.dtype), params)
            _calibrate_batch_norm(model, data.x_train[index])
            curve.append((model.evaluations() / n_train, accuracy(model, data.x_test, data.y_test)))
            next_mark += per_epoch
    nn.utils.vector_to_parameters(torch.as_tensor(strategy.result.xfavorite, dtype=vector.dtype), params)
    _calibrate_batch_norm(model, data.x_train[index])
    curve.append((model.evaluations() / n_train, accuracy(model, data.x_test, data.y_test)))


def _calibrate_batch_norm(model: nn.Module, x: Tensor) -> None:
    """Set every batch norm's running statistics to those of one forward pass on ``x``."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    if not norms:
        return
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: after one pass, exactly that pass's statistics
    with torch.no_grad():
        model(x)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
