"""A differentiable digital twin of the device (the first kind of learned backward)."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

from ..nets import MLP, embedded
from .base import _check_option, check_hidden, check_positive
from .learned import BUFFER_BYTES, LearnedEstimator, _ReplayBuffer, training_loss


class DigitalTwin(LearnedEstimator):
    """Backward through a learned differentiable model of the device, at the *real* inputs.

    As in physics-aware training (Wright et al., Nature 2022), the forward pass
    runs the real device and the backward pass is the twin's VJP evaluated at
    the inputs of this forward pass.  The twin (default: an :class:`~blackgrad.nets.MLP`
    on ``α = (x, θ)``; any ``nn.Module`` ``(B, d) → (B, m)`` may be given, e.g.
    a physics-structured one) is fitted to the device's outputs:

    * online, from every forward batch seen in training mode (``observe``),
      which costs no extra device evaluation;
    * optionally from probes (``probes > 0`` or an
      :class:`~blackgrad.estimators.Unbiased` wrapper's): with
      ``slope_weight > 0`` the twin's own slope along each probe is fitted to
      the measured one.  ``slope_fit="difference"`` (default) takes the twin's
      slope as the same difference quotient the device was measured with
      (step ``step``, scheme ``scheme``), so the bias of a finite step is the
      same on both sides and cancels (each probe row keeps its step and
      scheme, so probes from an :class:`~blackgrad.estimators.Unbiased`
      wrapper are matched too); it costs the twin two forward rows per probe
      row.  ``slope_fit="jvp"`` takes the twin's exact directional derivative
      (a forward-mode JVP): slower to train, and a lower VJP cosine in our
      benchmark (``benchmarks/twin_slope_fit.py``);
    * before training, with :meth:`fit` on a stated number of evaluations
      (the published anchor's pre-trained twin).  ``online=False`` then
      freezes it, as the published code does.

    Cost per ``vjp``: as :class:`~blackgrad.estimators.learned.LearnedEstimator`
    with ``probes`` (default 1: one evaluation per sample).  :meth:`fit` spends one evaluation per
    input row.

    Args:
        model: the twin, or None for ``MLP(d, m, hidden)``.
        hidden: hidden sizes of the default MLP.
        online: keep fitting the twin to forward data during training.
        probes: probe directions per sample (default: 1 when the twin learns
            online with ``slope_weight > 0``, else 0).  ``probes=0`` gives the
            free twin that learns from forward values alone (one evaluation
            per sample, no fidelity to gate on).
        slope_weight: weight of the slope-matching term on probe rows (default 1).
        slope_snr: None (default), or discount noisy slope rows: with a
            calibrated noise floor ``σ``, each fit scales the slope term by
            ``min(1, SNR / slope_snr)``, SNR the rows' measured slope power
            over the noise's share of it (``2σ²/h²`` per output for a
            one-sided slope, ``σ²/2h²`` central) less one.  Rows that are
            mostly noise then pull the twin less than its values do (a
            twin prior uses 3; BENCHMARKS.md).
        slope_fit: ``"difference"`` or ``"jvp"``: how the twin's own slope is taken.
        warmup: as for every learned estimator, but none by default for a
            twin of its own: warmed up, ``DigitalTwin()`` fell on the stack
            and through the drifting device, and ``Unbiased(DigitalTwin())``
            on the 5-bit one (seed 0, BENCHMARKS.md).  A twin serving as a
            learned Jacobian's or VJP's prior warms up with its estimator.
        (others: see :class:`~blackgrad.estimators.learned.LearnedEstimator`)
    """

    _repr_fields = ("probes", "online", "updates")
    # The twin's probes move the inputs and θ together: its values pin θ's slopes down
    # poorly (θ hardly varies within a batch), so every row carries some θ. On digits-SHG,
    # three seeds: 0.918 of accuracy with joint rows, 0.887 with rows split by part.
    separate_parts = False

    def __init__(
        self,
        model: nn.Module | None = None,
        hidden: tuple[int, ...] = (128, 128),
        online: bool = True,
        probes: float | None = None,
        slope_weight: float = 1.0,
        slope_fit: str = "difference",
        slope_snr: float | None = None,
        buffer: int = 8192,
        warmup: int = 0,
        **options: Any,
    ) -> None:
        if isinstance(slope_weight, bool) or not isinstance(slope_weight, (int, float)) or not slope_weight >= 0 or slope_weight == float("inf"):
            raise ValueError(f"slope_weight must be a finite number >= 0, got {slope_weight!r}")
        check_positive("slope_snr", slope_snr, allow_none=True)
        if probes is None:  # one probe per sample whenever its slope would be used
            probes = 1.0 if online and slope_weight > 0 else 0.0
        super().__init__(model=model, probes=probes, buffer=buffer, warmup=warmup, **options)
        if probes > 0 and (slope_weight <= 0 or not online):
            raise ValueError("DigitalTwin probes are only used with slope_weight > 0 and online=True; otherwise they would be paid for and thrown away")
        self.hidden = check_hidden(hidden)
        self.online = bool(online)
        self.slope_weight = float(slope_weight)
        self.slope_snr = None if slope_snr is None else float(slope_snr)
        _check_option("slope_fit", slope_fit, ("difference", "jvp"))
        self.slope_fit = slope_fit
        self.values = _ReplayBuffer(buffer, max_bytes=BUFFER_BYTES)  # (α, y) pairs

    def default_model(self, d: int, m: int) -> nn.Module:
        return embedded(self.embedding, d, lambda width: MLP(width, m, self.hidden))

    def observe(self, alpha: Tensor, y: Tensor) -> None:
        if not self.online:
            return
        self.prepare(alpha.shape[1], y.shape[1], alpha)
        self.values.add(alpha=alpha, y=y)

    def record(
        self, alpha: Tensor, direction: Tensor, slope: Tensor, grad_out: Tensor, step: float | None = None, central: bool | None = None
    ) -> None:
        if self.online:  # a frozen twin neither learns from probe rows nor is gated by them
            super().record(alpha, direction, slope, grad_out, step=step, central=central)

    def update(self) -> None:
        if self.online:
            super().update()

    def fit(self, prober, alpha: Tensor | None = None, epochs: int = 50, progress: bool = False, box: int | str | None = None) -> list[float]:
        """Pre-fit the twin on the device's outputs at the rows ``alpha`` ``(N, d)``.

        Spends ``N`` probe evaluations (one per row), then runs ``epochs``
        passes of minibatch training over them.  Returns the loss per epoch.

        Or, given a :class:`~blackgrad.recording.Recording` (or its path) in
        place of the prober and no ``alpha``: fits on every evaluation it
        recorded of one box (``box``: its index or name, where it holds
        several), spending none.
        """
        from ..recording import Recording

        if isinstance(prober, (str, os.PathLike, Recording)):
            if alpha is not None:
                raise TypeError("DigitalTwin.fit takes a recording or (prober, alpha), not both a recording and alpha")
            built = None if self.model is None else next(self.model.parameters(), None)
            dtype = torch.get_default_dtype() if built is None else built.dtype
            if isinstance(prober, Recording):
                alpha, y = prober.rows(box=box, dtype=dtype)
            else:
                with Recording(prober) as recording:
                    alpha, y = recording.rows(box=box, dtype=dtype)
        elif alpha is None:
            raise TypeError("DigitalTwin.fit(prober, alpha) needs the rows alpha to evaluate")
        else:
            y = prober(alpha)
        self.prepare(alpha.shape[1], y.shape[1], alpha)
        self.values.reserve(len(self.values) + alpha.shape[0])  # keep every row that was paid for
        self.values.add(alpha=alpha, y=y)
        steps_per_epoch = max(1, alpha.shape[0] // self.replay_batch())
        history = []
        from .._progress import progress_bar

        for _ in progress_bar(range(epochs), progress, desc="fitting twin"):
            start = len(self.train_losses)
            self.train(steps_per_epoch)
            history.append(sum(self.train_losses[start:]) / steps_per_epoch)
        return history

    def predict_vjp(self, alpha: Tensor, grad_out: Tensor) -> Tensor:
        with torch.enable_grad():
            point = alpha.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.model(point), point, grad_out)
        return grad

    def fit_loss(self, rows: dict[str, Tensor]) -> Tensor:
        # ``rows`` come from the probe buffer (empty if no probes yet); value rows are drawn here.
        terms = []
        if len(self.values):
            values = self.values.sample(self.replay_batch(), self.generator)
            terms.append(training_loss(self.model(values["alpha"]), values["y"], "mse"))
        if rows and self.slope_weight > 0:
            twin_slope = self.twin_slope(rows["alpha"], rows["direction"], rows["step"], rows["central"])
            terms.append(self.slope_term_weight(rows) * training_loss(twin_slope, rows["slope"], self.loss))
        if not terms:
            raise RuntimeError("DigitalTwin has nothing to fit: no forward values yet and no slope rows (slope_weight=0)")
        return sum(terms)

    def slope_term_weight(self, rows: dict[str, Tensor]) -> float:
        """The slope term's weight in a fit on ``rows``: ``slope_weight``, discounted for noise if ``slope_snr`` says so."""
        noise = self._slope_noise(rows) if self.slope_snr is not None else None
        if noise is None:  # not asked, or no calibrated noise: every row counts in full
            return self.slope_weight
        share = float(noise.mean() / rows["slope"].double().pow(2).mean().clamp(min=1e-30))
        if share <= 0:
            return self.slope_weight
        ratio = max(1 - share, 0.0) / share  # the slopes' signal power over their noise's
        return self.slope_weight * min(1.0, ratio / self.slope_snr)

    def twin_slope(self, alpha: Tensor, direction: Tensor, step: Tensor, central: Tensor) -> Tensor:
        """The twin's slope along ``direction`` at ``alpha``, taken as ``slope_fit`` says.

        ``step`` ``(N,)`` and ``central`` ``(N,)`` (bool) say how each row's
        slope was measured: one-sided ``(f(α + hε) − f(α)) / h`` or central
        ``(f(α + hε) − f(α − hε)) / 2h``.
        """
        if self.slope_fit == "jvp":
            return torch.func.jvp(self.model, (alpha,), (direction,))[1]
        h = step.to(alpha.dtype).unsqueeze(1)
        if not bool(central.any()):  # all one-sided (the default): what the torch.where below would pick
            ends = self.model(torch.cat([alpha, alpha + h * direction])).reshape(2, alpha.shape[0], -1)
            return (ends[1] - ends[0]) / h
        start = torch.where(central.unsqueeze(1), alpha - h * direction, alpha)
        ends = self.model(torch.cat([start, alpha + h * direction])).reshape(2, alpha.shape[0], -1)
        return (ends[1] - ends[0]) / torch.where(central.unsqueeze(1), 2 * h, h)

    def has_training_data(self) -> bool:
        return len(self.values) > 0 or (len(self.buffer) > 0 and self.slope_weight > 0)

    def state_dict(self):
        state = super().state_dict()
        state["values"] = self.values.state_dict()
        return state

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.values.load_state_dict(state["values"])
