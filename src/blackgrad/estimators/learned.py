"""What the learned estimators share: probing, a replay buffer, online training, state.

Three kinds of estimator learn the missing backward pass from data the
device gives: a differentiable twin of ``f`` (option 1), a Jacobian model
``J(α)`` (option 2), a VJP model ``g(α, grad_out)`` (option 3).  Their training
data are *probe rows*: a point ``α``, a random direction ``ε`` (Rademacher,
shared on θ coordinates), and the measured slope along it,
``s = (f(α + hε) − f(α)) / h`` (one-sided, reusing the forward output) or
``(f(α + hε) − f(α − hε)) / 2h`` (central), so that ``J(α) ε ≈ s``.

The lifecycle of a :class:`LearnedEstimator`, one backward pass at a time:

1. :meth:`~LearnedEstimator.prepare` builds the model once the sizes are known;
2. ``observe`` (forward data) and :meth:`~LearnedEstimator.record` (probe
   rows: its own, or a wrapper's) only *add* rows; ``record`` first scores
   the new rows against the model's prediction — a held-out test, since the
   model has never trained on them — and keeps the running
   :class:`Fidelity`;
3. :meth:`~LearnedEstimator.update` takes ``updates`` optimiser steps on
   replay minibatches (``WARMUP_FACTOR`` times as many in the first
   ``warmup`` passes): the one place training happens, once per ``vjp``;
4. the VJP comes from the model, at no further device cost, through the
   fidelity gate: while the model's fidelity is low it withholds the VJP
   (:meth:`~LearnedEstimator.withholds`: the box passes None upstream), so
   that an untrained model cannot wreck the layers before it
   (:class:`~blackgrad.estimators.fidelity.FidelityMonitor`).
"""

from __future__ import annotations

import abc
import copy
import math
from typing import Any

import torch
from torch import Tensor, nn

from .base import Estimator, ProberLike, VJPQuery, _check_option, check_positive, _directional_slopes, _make_generator
from .fidelity import DEFAULT_GATE, CorrectionShare, Fidelity, FidelityMonitor

TRAINING_LOSSES = ("mse", "cosine", "mse+cosine")


def training_loss(prediction: Tensor, target: Tensor, kind: str) -> Tensor:
    """The fit of a backward model's prediction to measured slopes.

    ``mse``: ``mean |p − t|² / mean |t|²`` (normalised, so the learning rate
    does not depend on the device's scale); ``cosine``: ``1 − cos(p, t)`` per
    row (rows of a 1-D tensor: one cosine over the whole vector), blind to
    scale (for a device whose gain drifts or is unknown); ``mse+cosine``: their sum.
    """
    mse = (prediction - target).pow(2).mean() / target.pow(2).mean().clamp(min=1e-30)
    if kind == "mse":
        return mse
    if prediction.dim() == 1:
        prediction, target = prediction.unsqueeze(0), target.unsqueeze(0)
    cosine = (1 - nn.functional.cosine_similarity(prediction, target, dim=-1, eps=1e-12)).mean()
    return cosine if kind == "cosine" else mse + cosine


#: how many times ``updates`` a learned estimator takes in each of its first ``warmup`` backward passes
WARMUP_FACTOR = 4

#: replay minibatch rows by default, for a device up to ``REPLAY_NUMBERS / 256`` wide (``d + m``)
DEFAULT_REPLAY_BATCH = 256
#: the most numbers of ``α`` and ``y`` a default replay minibatch holds: its cost per training step
REPLAY_NUMBERS = 2**19
#: the fewest rows a default replay minibatch has, however wide the device
MIN_REPLAY_BATCH = 32
#: the most memory a learned estimator's replay buffer takes by default (fewer rows for a very wide device)
BUFFER_BYTES = 256 * 2**20


class _ReplayBuffer:
    """A ring buffer of named tensor rows, sampled uniformly with a given generator.

    ``max_bytes``: when the first rows arrive and their width is known, the
    capacity is lowered to what fits in that many bytes (None: no limit), so
    that memory grows like the row width, not like capacity × width, on a
    device with thousands of inputs and outputs.  :meth:`reserve` may grow
    it past that: it is asked for.
    """

    def __init__(self, capacity: int, max_bytes: int | None = None) -> None:
        check_positive("buffer", capacity, integer=True)
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.data: dict[str, Tensor] = {}
        self.size = 0
        self.position = 0

    def __len__(self) -> int:
        return self.size

    def add(self, **rows: Tensor) -> None:
        count = next(iter(rows.values())).shape[0]
        if not self.data:
            if self.max_bytes is not None:
                row_bytes = sum(math.prod(v.shape[1:]) * v.element_size() for v in rows.values())
                self.capacity = max(1, min(self.capacity, self.max_bytes // max(row_bytes, 1)))
            # Empty, not zeroed: only the first `size` rows are ever read (sampled, or saved by
            # state_dict), and zeroing would touch every page of a buffer of up to BUFFER_BYTES
            # at once, in the first step; untouched pages cost nothing until rows arrive.
            self.data = {k: v.new_empty((self.capacity,) + v.shape[1:]) for k, v in rows.items()}
        if count >= self.capacity:  # keep only the newest rows
            rows = {k: v[-self.capacity :] for k, v in rows.items()}
            count = self.capacity
        slots = (self.position + torch.arange(count)) % self.capacity
        for key, value in rows.items():
            self.data[key][slots.to(value.device)] = value.detach()
        self.position = (self.position + count) % self.capacity
        self.size = min(self.size + count, self.capacity)

    def reserve(self, capacity: int) -> None:
        """Grow to hold at least ``capacity`` rows, keeping the rows held (oldest first)."""
        if capacity <= self.capacity:
            return
        self.max_bytes = None  # the capacity asked for wins over the default limit
        held = {k: torch.roll(v, -self.position, 0)[-self.size :] if self.size == self.capacity else v[: self.size] for k, v in self.data.items()}
        self.capacity, self.data, self.size, self.position = capacity, {}, 0, 0
        if held and next(iter(held.values())).shape[0]:
            self.add(**held)

    def sample(self, count: int, generator: torch.Generator) -> dict[str, Tensor]:
        index = torch.randint(0, self.size, (min(count, self.size),), generator=generator)
        # index_select: the rows advanced indexing would copy, in under half its time (24 draws a step)
        return {k: v.index_select(0, index.to(v.device)) for k, v in self.data.items()}

    def state_dict(self) -> dict[str, Any]:
        # the rows held: a buffer that is not full holds them first, and the rest was never written
        return {"capacity": self.capacity, "data": {k: v[: self.size].clone() for k, v in self.data.items()}, "size": self.size, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.capacity, self.size, self.position = state["capacity"], state["size"], state["position"]
        self.data = {}
        for key, rows in state["data"].items():  # the rows held (or, from older states, every slot)
            self.data[key] = rows.new_empty((self.capacity,) + rows.shape[1:])
            self.data[key][: rows.shape[0]] = rows


class LearnedEstimator(Estimator):
    """Base of the learned estimators: probes → replay buffer → online training → model VJP.

    Args (shared by every learned estimator):
        model: the backward model, or None for the estimator's default (built
            lazily once the sizes ``d`` and ``m`` are known).
        probes: probe directions per sample at each backward pass; may be
            fractional (0.25: a random quarter of the batch gets one) or 0
            (learn from forward data or from a wrapper's probes only).
        step: perturbation size ``h``; default the calibrated profile's, else
            from the dtype.
        scheme: ``"forward"`` (one evaluation per probe, reusing the forward
            output) or ``"central"`` (two).
        loss: ``"mse"``, ``"cosine"`` or ``"mse+cosine"`` (:func:`training_loss`).
        lr: Adam learning rate of the model (ignored if ``optimizer`` is given).
        updates: optimiser steps at each backward pass.
        warmup: backward passes at the start that take ``WARMUP_FACTOR`` (4)
            times ``updates`` (a :class:`~blackgrad.estimators.DigitalTwin`
            of its own: none by default).  A model starts knowing nothing,
            and its gate keeps the layers before the device still until it
            predicts probes it has not seen; the sooner it fits, the sooner
            they train (the box's default over three seeds: the mean
            fraction of exact backprop's accuracy through the drifting
            device 0.983 instead of 0.967, BENCHMARKS.md).  The cost is that
            of ``3 · warmup · updates`` optimiser steps, once.  0: none.
        batch_size: replay minibatch size; None (default): 256 rows, fewer
            for a device so wide that they would hold more than
            ``REPLAY_NUMBERS`` numbers of ``α`` and ``y`` (64 at ``n = m = 4096``),
            so that a training step costs about the same at any width.
        buffer: replay buffer capacity, in probe rows; fewer for a device so
            wide that they would take more than 256 MB (``BUFFER_BYTES``).
        optimizer: a ``torch.optim`` class or factory ``params -> Optimizer``.
        embedding: a module applied to ``α`` before the default model's net,
            with an ``out_features`` attribute, e.g.
            :class:`~blackgrad.nets.FourierFeatures` at a phase-encoded
            device's own frequencies; ``"auto"`` (default): multi-scale
            Fourier features whose scale is taken from the first inputs
            (:func:`auto_embedding`); None: the raw ``α``.  Ignored when
            ``model`` is given.
        gate: ``(low, high)`` fidelity cosines: the VJP is withheld (the
            box passes None, which an optimiser skips) until ``gate_rows``
            probe rows were scored and the fidelity
            reached ``high``, and again if it falls below ``low`` (per part;
            see :class:`~blackgrad.estimators.fidelity.FidelityMonitor`).
            None: never gated.  An estimator that gets no probe rows at all
            (``probes=0`` and no wrapper) cannot be scored and is not gated.
        gate_rows: probe rows to score before the gate may open.
        prior: a :class:`~blackgrad.estimators.DigitalTwin` fed the same
            forward data and probe rows, whose VJP the model corrects: the
            model is trained on what the twin's slopes leave unexplained,
            and the estimate is the twin's VJP plus the model's in the share
            (per part, between 0 and 1) that fits the rows it had not trained
            on best (:class:`~blackgrad.estimators.fidelity.CorrectionShare`).
        seed: seed of the estimator's generator (probes, minibatches, model init).

    Cost per ``vjp``: ``(⌊probes⌋·B + round(frac(probes)·B))`` evaluations, doubled
    for ``scheme="central"``; answering the VJP itself is free.
    """

    _repr_fields = ("probes", "scheme", "loss", "updates")
    #: how many of the latest training losses ``train_losses`` keeps
    LOSS_HISTORY = 10_000

    def __init__(
        self,
        model: nn.Module | None = None,
        probes: float = 1.0,
        step: float | None = None,
        scheme: str = "forward",
        loss: str = "mse",
        lr: float = 1e-3,
        updates: int = 8,
        warmup: int = 40,
        batch_size: int | None = None,
        buffer: int = 8192,
        optimizer: Any = None,
        embedding: nn.Module | str | None = "auto",
        gate: tuple[float, float] | None = DEFAULT_GATE,
        gate_rows: int = 256,
        prior: "LearnedEstimator | None" = None,
        seed: int | None = 0,
    ) -> None:
        if isinstance(probes, bool) or not isinstance(probes, (int, float)) or probes < 0:
            raise ValueError(f"probes must be a non-negative number, got {probes!r}")
        check_positive("step", step, allow_none=True)
        _check_option("scheme", scheme, ("forward", "central"))
        _check_option("loss", loss, TRAINING_LOSSES)
        check_positive("lr", lr)
        if isinstance(updates, bool) or not isinstance(updates, int) or updates < 0:
            raise ValueError(f"updates must be a non-negative int, got {updates!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"warmup must be a non-negative int (backward passes), got {warmup!r}")
        check_positive("batch_size", batch_size, integer=True, allow_none=True)
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if isinstance(embedding, str):
            _check_option("embedding", embedding, ("auto",))
        elif embedding is not None and not hasattr(embedding, "out_features"):
            raise TypeError("embedding needs an out_features attribute giving its output width")
        monitor = FidelityMonitor(gate, gate_rows)  # validates the gate before anything is kept
        self.model = model
        self.embedding = embedding
        self.probes = probes
        self.step = step
        self.scheme = scheme
        self.loss = loss
        self.lr = lr
        self.updates = updates
        self.warmup = warmup
        self.passes = 0  # backward passes trained so far (update calls): the warm-up counts them
        self.batch_size = batch_size
        self.buffer = _ReplayBuffer(buffer, max_bytes=BUFFER_BYTES)
        self._optimizer_factory = optimizer
        self.optimizer: torch.optim.Optimizer | None = None
        self.generator = _make_generator(seed)
        self.sizes: tuple[int, int] | None = None  # (d, m) once known
        self.train_losses: list[float] = []
        if prior is not None and not hasattr(prior, "twin_slope"):
            raise TypeError(f"prior must be a DigitalTwin or None, got {prior!r}")
        self.prior = prior
        self.monitor = monitor
        self.correction_share = CorrectionShare()  # used once a prior is set
        self._shared: Tensor | None = None  # (d,) which coordinates are θ, once known

    # ------------------------------------------------------- subclass hooks
    @abc.abstractmethod
    def default_model(self, d: int, m: int) -> nn.Module:
        """The model used when none is given."""

    @abc.abstractmethod
    def predict_vjp(self, alpha: Tensor, grad_out: Tensor) -> Tensor:
        """The model's VJP ``grad_out ⋅ Ĵ(α)``, shape ``(B, d)``; no device evaluation."""

    @abc.abstractmethod
    def fit_loss(self, rows: dict[str, Tensor]) -> Tensor:
        """Training loss on a replay minibatch ``rows``."""

    def predict_response(self, rows: dict[str, Tensor]) -> Tensor:
        """The model's prediction of each probe row's ``gᵀs``: ``v̂(α, g)·ε``, shape ``(N,)``.

        From the VJP the estimator would pass upstream, whatever its model is
        trained on: that is what the fidelity must judge.
        """
        return (self.predict_vjp(rows["alpha"], rows["grad_out"]) * rows["direction"]).sum(1)

    def prior_slope(self, rows: dict[str, Tensor]) -> Tensor | float:
        """The prior's slopes along the rows' directions (detached), or 0 without a prior."""
        if self.prior is None:
            return 0.0
        with torch.no_grad():
            return self.prior.twin_slope(rows["alpha"], rows["direction"], rows["step"], rows["central"])

    def correction_vjp(self, alpha: Tensor, grad_out: Tensor) -> Tensor:
        """The model's own VJP, the prior's left out: what the model adds to its prior, ``(B, d)``."""
        return self.predict_vjp(alpha, grad_out) - self.prior_vjp(alpha, grad_out)

    def prior_vjp(self, alpha: Tensor, grad_out: Tensor) -> Tensor | float:
        """The prior's VJP, or 0 without a prior."""
        return 0.0 if self.prior is None else self.prior.predict_vjp(alpha, grad_out)

    # ------------------------------------------------------------- contract
    def observe(self, alpha: Tensor, y: Tensor) -> None:
        if self.prior is not None:
            self.prior.observe(alpha, y)

    def vjp(self, prober: ProberLike, query: VJPQuery) -> Tensor:
        self.prepare(query.dim, query.y.shape[1], query.alpha, shared=query.shared)
        if self.probe_cost(query.n_active, query.y.shape[1], query.batch) > 0:
            self.record(*self.probe(prober, query))
        self.update()
        with torch.no_grad():
            grad = self.upstream_vjp(query.alpha, query.grad_out, query.shared)
        return self.gated(grad, query.shared)

    def upstream_vjp(self, alpha: Tensor, grad_out: Tensor, shared: Tensor) -> Tensor:
        """The VJP this estimator stands for, before its gate: ``(B, d)``.

        The model's VJP; with a prior, the prior's plus the model's
        correction in the share that fits held-out rows best, per part
        (:class:`~blackgrad.estimators.fidelity.CorrectionShare`).
        """
        if self.prior is None:
            return self.predict_vjp(alpha, grad_out)
        prior = self.prior.predict_vjp(alpha, grad_out)  # once: the whole estimate below is the model's plus this
        return self.correction_share.apply(self.correction_vjp(alpha, grad_out) + prior, prior, shared)

    def gated(self, grad: Tensor, shared: Tensor) -> Tensor:
        """What this estimator passes upstream for its model's VJP ``grad``: each part through its gate."""
        return grad if self._unscored else self.monitor.apply(grad, shared)

    @property
    def needs_profile(self) -> bool:
        return self.step is None and self.probes > 0

    def calibrate(self, profile) -> None:
        super().calibrate(profile)
        if self.prior is not None:
            self.prior.calibrate(profile)

    # ------------------------------------------------------------ fidelity
    #: whether each own probe row moves the inputs or θ alone (see :meth:`probe`), so that the
    #: two parts are scored on rows of their own; otherwise rows move both and count for both
    separate_parts = True

    @property
    def fidelity(self) -> Fidelity | None:
        """The running fidelity on the inputs' rows (rows it had not trained on); None before any."""
        return self.monitor.part("inputs")

    def part_fidelity(self, part: str) -> Fidelity | None:
        """The running fidelity of the rows that moved ``part`` (``"inputs"`` or ``"params"``)."""
        return self.monitor.part(part)

    @property
    def _unscored(self) -> bool:
        """No probe row has reached it yet (none of its own, as for ``probes=0``, nor a wrapper's):
        it cannot be scored, so it is not gated.  (With probes, a backward pass records its rows
        before it answers, so only a fraction of probes that rounds to none leaves it unscored.)"""
        return self.monitor.scored == 0

    def gate_factor(self, part: str = "inputs") -> float:
        """The factor the VJP of ``part`` is passed upstream with (see ``gate``)."""
        return 1.0 if self._unscored else self.monitor.factor(part)

    def withholds(self, part: str) -> bool:
        return self.gate_factor(part) == 0

    def _score(self, rows: dict[str, Tensor], weight: Tensor | None = None) -> None:
        """Score new probe rows, *before* the model has trained on them (:class:`FidelityMonitor`).

        ``weight`` ``(N,)``: the norms of the rows' loss gradients (stored
        normalised), so that θ is scored on its batch sum.  With a prior, the
        rows also fit the correction's share, after they were scored with
        the share as it was.
        """
        measured = (rows["grad_out"] * rows["slope"]).sum(1)
        with torch.no_grad():
            if self.prior is None:
                predicted = self.predict_response(rows)
            else:
                predicted = self._score_share(rows, measured)
        self.monitor.score(predicted, measured, rows["direction"], self._shared, self._slope_noise(rows), weight=weight)

    def _score_share(self, rows: dict[str, Tensor], measured: Tensor) -> Tensor:
        """The rows' predicted responses (the prior plus the correction's share); then the share learns from them."""
        direction = rows["direction"]
        shared = torch.zeros(direction.shape[1], dtype=torch.bool) if self._shared is None else self._shared
        shared = shared.to(direction.device)
        prior = self.prior.predict_vjp(rows["alpha"], rows["grad_out"])
        whole = self.correction_vjp(rows["alpha"], rows["grad_out"]) + prior  # as upstream_vjp forms it
        correction = (whole - prior) * direction
        parts = torch.stack([correction[:, ~shared].sum(1), correction[:, shared].sum(1)], 1)  # (N, 2)
        base = (prior * direction).sum(1)
        predicted = base + (parts * self.correction_share.weights().to(parts)).sum(1)
        moved = torch.stack([(direction[:, ~shared] != 0).any(1), (direction[:, shared] != 0).any(1)], 1)
        self.correction_share.add(measured - base, parts, moved)
        return predicted

    def _slope_noise(self, rows: dict[str, Tensor]) -> Tensor | None:
        """The variance the device's noise adds to each row's ``gᵀs`` (``g`` of unit norm), if calibrated.

        A one-sided slope ``(f(α + hε) − y) / h`` holds two readings, each with
        the profile's noise floor: ``2 σ² / h²``; a central one ``σ² / 2h²``.
        """
        if self.profile is None or self.profile.noise_floor == 0:
            return None
        floor = self.profile.noise_floor**2
        step = rows["step"].double()
        return torch.where(rows["central"], floor / (2 * step**2), 2 * floor / step**2)

    def probe_cost(self, d: int, m: int, batch: int) -> int:
        if d == 0:
            return 0
        whole = math.floor(self.probes)
        count = whole * batch + round((self.probes - whole) * batch)
        return count * (2 if self.scheme == "central" else 1)

    # -------------------------------------------------------------- shared
    def prepare(self, d: int, m: int, like: Tensor, shared: Tensor | None = None) -> None:
        """Build the model and optimiser for a ``d → m`` device on ``like``'s dtype/device.

        ``shared`` ``(d,)`` marks the device-parameter (θ) coordinates, scored
        and gated apart from the inputs.
        """
        if shared is not None:
            self._shared = shared.detach().cpu().bool()
        if self.prior is not None:
            self.prior.prepare(d, m, like, shared=shared)
        if self.sizes is not None:
            if self.sizes != (d, m):
                raise ValueError(f"{type(self).__name__} was built for a {self.sizes[0]} -> {self.sizes[1]} device, not {d} -> {m}")
            built = next(self.model.parameters(), None)
            if built is not None and built.dtype != like.real.dtype:
                raise TypeError(
                    f"{type(self).__name__} was built for {built.dtype} inputs and now gets {like.real.dtype} "
                    "(the model around it was cast?): give the black box a new estimator, or keep its inputs "
                    f"in {built.dtype}"
                )
            return
        self.sizes = (d, m)
        if self.embedding == "auto":
            self.embedding = auto_embedding(d)
        if self.model is None:
            # Initialise from the estimator's own generator without touching the user's RNG.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator)))
                self.model = self.default_model(d, m)
        self.model.to(device=like.device, dtype=like.real.dtype)
        factory = self._optimizer_factory
        if factory is None:
            # foreach: the same updates, bit for bit, with one call per step instead of a Python
            # loop over the parameters (torch's default only off CPU); 16 steps per backward pass
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.lr, foreach=True)
        else:
            self.optimizer = factory(self.model.parameters())

    def probe(self, prober, query: VJPQuery) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Spend this backward pass's probes: returns rows ``(α, ε, slope, grad_out)``.

        With ``separate_parts``, each row moves either the inputs or θ (at
        random, in proportion to their active sizes).
        """
        alpha, batch = query.alpha, query.batch
        whole = math.floor(self.probes)
        extra = round((self.probes - whole) * batch)
        draws = whole + (1 if extra else 0)
        directions = query.directions(draws, self.generator)  # (K, B, d)
        pick_k = torch.arange(whole).repeat_interleave(batch)
        pick_b = torch.arange(batch).repeat(whole)
        if extra:
            chosen = torch.randperm(batch, generator=self.generator)[:extra]
            pick_k = torch.cat([pick_k, torch.full((extra,), whole)])
            pick_b = torch.cat([pick_b, chosen])
        pick_k, pick_b = pick_k.to(alpha.device), pick_b.to(alpha.device)
        direction = directions[pick_k, pick_b]
        shared = query.shared.to(alpha.device)
        inputs, params = query.active & ~shared, query.active & shared
        # the θ group of each row: rows of one draw move θ alike (None: θ is not moved)
        group = pick_k if query.need_theta else None
        if self.separate_parts and bool(inputs.any()) and bool(params.any()):
            # Each row moves either the inputs or θ, in proportion to their sizes, so that
            # the two parts of the VJP are scored and gated apart: θ's gradient is summed
            # over the batch, where a model's bias adds up instead of averaging out.
            share = int(params.sum()) / int(query.active.sum())
            moves_params = torch.rand(direction.shape[0], generator=self.generator).to(alpha.device) < share
            direction = torch.where(moves_params.unsqueeze(1), direction * params, direction * inputs)
            group = torch.where(moves_params, pick_k + 1, 0)  # 0: at the query's own θ
        points = alpha[pick_b]
        h = self.probe_step(alpha.dtype)
        y = None if self.scheme == "central" else query.y[pick_b]
        slope = _directional_slopes(prober, points, direction, h, y, query, group)
        return points, direction, slope, query.grad_out[pick_b]

    def probe_step(self, dtype: torch.dtype, order: int | None = None) -> float:
        """The step ``h`` of this estimator's own probes (see :meth:`Estimator.probe_step`)."""
        return super().probe_step(dtype, (2 if self.scheme == "central" else 1) if order is None else order)

    def record(
        self, alpha: Tensor, direction: Tensor, slope: Tensor, grad_out: Tensor, step: float | None = None, central: bool | None = None
    ) -> None:
        """Score new probe rows against the model, then store them; no training here.

        ``step`` and ``central`` say how the slopes were measured (default:
        by this estimator's own ``step`` and ``scheme``; a wrapper such as
        :class:`~blackgrad.estimators.Unbiased` passes its own); they are kept
        with each row for models that take their own slopes the same way.
        """
        self.prepare(alpha.shape[1], slope.shape[1], alpha)
        central = self.scheme == "central" if central is None else bool(central)
        step = self.probe_step(alpha.dtype) if step is None else float(step)
        count = alpha.shape[0]
        scale = grad_out.norm(dim=1, keepdim=True).clamp(min=1e-30)
        rows = dict(
            alpha=alpha,
            direction=direction,
            slope=slope,
            grad_out=grad_out / scale,
            step=alpha.new_full((count,), step),
            central=torch.full((count,), central, dtype=torch.bool, device=alpha.device),
        )
        if self.prior is not None:
            self.prior.record(alpha, direction, slope, grad_out, step=step, central=central)
        self._score(rows, weight=scale.squeeze(1))
        self.buffer.add(**rows)

    def update(self) -> None:
        """Take this backward pass's optimiser steps (the prior's first): where training happens.

        ``updates`` of them, ``WARMUP_FACTOR`` times as many in the first ``warmup`` passes.
        """
        if self.prior is not None:
            self.prior.update()
        self.train(self.updates * (WARMUP_FACTOR if self.passes < self.warmup else 1))
        self.passes += 1

    def learn(
        self, alpha: Tensor, direction: Tensor, slope: Tensor, grad_out: Tensor, step: float | None = None, central: bool | None = None
    ) -> None:
        """:meth:`record` the rows, then :meth:`update`: for a wrapper that probes for this estimator."""
        self.record(alpha, direction, slope, grad_out, step=step, central=central)
        self.update()

    def replay_batch(self) -> int:
        """Rows per replay minibatch: ``batch_size``, or its default for the device's width."""
        if self.batch_size is not None:
            return self.batch_size
        if self.sizes is None:
            return DEFAULT_REPLAY_BATCH
        return max(MIN_REPLAY_BATCH, min(DEFAULT_REPLAY_BATCH, REPLAY_NUMBERS // sum(self.sizes)))

    def has_training_data(self) -> bool:
        return len(self.buffer) > 0

    def train(self, steps: int) -> None:
        """Take ``steps`` optimiser steps on replay minibatches."""
        if steps == 0 or not self.has_training_data():
            return
        with torch.enable_grad():
            for _ in range(steps):
                rows = self.buffer.sample(self.replay_batch(), self.generator) if len(self.buffer) else {}
                self.optimizer.zero_grad()
                loss = self.fit_loss(rows)
                loss.backward()
                self.optimizer.step()
                self.train_losses.append(float(loss.detach()))
        del self.train_losses[: -self.LOSS_HISTORY]

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(
            sizes=self.sizes,
            buffer=self.buffer.state_dict(),
            model=None if self.model is None else {k: v.clone() for k, v in self.model.state_dict().items()},
            optimizer=None if self.optimizer is None else copy.deepcopy(self.optimizer.state_dict()),
            train_losses=list(self.train_losses),
            passes=self.passes,
            prior=None if self.prior is None else self.prior.state_dict(),
            fidelity=self.monitor.state_dict(),
            correction_share=self.correction_share.state_dict(),
            shared=None if self._shared is None else self._shared.clone(),
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.buffer.load_state_dict(state["buffer"])
        self.train_losses = list(state["train_losses"])
        # absent from states saved before the warm-up existed: their estimators were past it
        self.passes = int(state.get("passes", self.warmup))
        if self.prior is not None and state.get("prior") is not None:
            self.prior.load_state_dict(state["prior"])
        if "fidelity" in state:  # absent from states saved before the monitor existed
            self.monitor.load_state_dict(state["fidelity"])
            self._shared = None if state["shared"] is None else state["shared"].clone()
        if "correction_share" in state:  # absent from states saved before the share was fitted
            self.correction_share.load_state_dict(state["correction_share"])
        if state["sizes"] is not None:
            model_state = state["model"]
            like = next(iter(model_state.values())) if model_state else torch.zeros(())
            generator_state = self.generator.get_state()
            self.prepare(*state["sizes"], like)
            self.generator.set_state(generator_state)
            self.model.load_state_dict(model_state)
            self.optimizer.load_state_dict(state["optimizer"])


#: the input-scale multiples of the automatic embedding (``benchmarks/auto_features.py``)
AUTO_MULTIPLES = (0.5, 1, 2)


#: the widest input that gets the automatic Fourier features; a wider one is fed raw
AUTO_FEATURES_LIMIT = 512


def auto_embedding(d: int) -> nn.Module | None:
    """The learned models' default input features: :class:`~blackgrad.nets.MultiScaleFourier`.

    ``sin`` and ``cos`` of each coordinate at ``π·(0.5, 1, 2) / s`` radians per
    unit, ``s`` the largest ``|α|`` of the first batch the model sees, beside
    the raw coordinates: a device that responds to its inputs as phases (an
    optical one) gets features near its own frequency without being told it,
    and a smooth one keeps the raw inputs.  Chosen over none, the device's
    own frequencies, denser and wider octave sets, learned frequencies and
    random Fourier features on four benchmark tasks
    (``benchmarks/auto_features.py``, BENCHMARKS.md).

    Above ``AUTO_FEATURES_LIMIT`` input coordinates: None, the raw ``α``.
    The features make the first layer seven times wider, and for a wide
    device (an SLM with thousands of pixels) that layer is nearly all of
    the training step's cost (``benchmarks/learned_scaling.py``).
    """
    if d > AUTO_FEATURES_LIMIT:
        return None
    from ..nets import MultiScaleFourier

    return MultiScaleFourier(d, AUTO_MULTIPLES)


#: the weight of the probe slopes against the forward values in a ``prior="twin"``'s fit
PRIOR_SLOPE_WEIGHT = 1.0
#: a ``prior="twin"``'s ``slope_snr``: slope rows with less signal than 3× their noise weigh less
#: (the stack's first box, where they are mostly noise; BENCHMARKS.md, "The twin prior's slope term")
PRIOR_SLOPE_SNR = 3.0


def resolve_prior(prior: Any, estimator: LearnedEstimator, hidden: tuple[int, ...]) -> "LearnedEstimator | None":
    """``prior="twin"``: a :class:`~blackgrad.estimators.DigitalTwin` sharing ``estimator``'s options.

    The twin fits the forward values (free) and the estimator's own probe
    slopes, the slopes discounted where the calibrated noise is more than a
    third of their signal (``PRIOR_SLOPE_SNR``); it spends no probes of its
    own and is never gated on its own (the estimator it serves is).
    """
    from .digital_twin import DigitalTwin

    if prior is None or isinstance(prior, DigitalTwin):
        return prior
    if not isinstance(prior, str):
        raise TypeError(f"prior must be a DigitalTwin, 'twin' or None, got {prior!r}")
    if prior != "twin":
        raise ValueError(f"prior must be 'twin', a DigitalTwin or None, got {prior!r}")

    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=estimator.generator))
    return DigitalTwin(
        hidden=hidden,
        probes=0.0,
        slope_weight=PRIOR_SLOPE_WEIGHT,
        slope_snr=PRIOR_SLOPE_SNR,
        step=estimator.step,
        scheme=estimator.scheme,
        lr=estimator.lr,
        updates=estimator.updates,
        warmup=estimator.warmup,
        batch_size=estimator.batch_size,
        buffer=estimator.buffer.capacity,
        embedding=copy.deepcopy(estimator.embedding),
        gate=None,
        seed=seed,
    )


def random_training_grad(rows: dict[str, Tensor], mode: str, generator: torch.Generator) -> Tensor:
    """The ``grad_out`` a VJP model trains with: stored, a random basis vector, or Gaussian."""
    stored = rows["grad_out"]
    if mode == "grad_out":
        return stored
    count, m = stored.shape
    if mode == "basis":
        index = torch.randint(0, m, (count,), generator=generator)
        return nn.functional.one_hot(index, m).to(stored)
    draw = torch.randn(count, m, generator=generator).to(stored)
    return draw / draw.norm(dim=1, keepdim=True)


__all__ = ["LearnedEstimator", "resolve_prior", "_ReplayBuffer", "training_loss", "TRAINING_LOSSES", "random_training_grad"]
