"""Broadband second-harmonic generation of a shaped femtosecond pulse."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Device, bin_matrix, power_of, working_dtype


class SHG(Device):
    """Second-harmonic generation (SHG) of a phase-shaped ultrashort pulse.

    The physical neural network of Wright et al., "Deep physical neural
    networks trained with backpropagation" (Nature 601, 2022): a pulse shaper
    writes inputs and parameters into the spectral phase of a femtosecond
    pulse, a χ⁽²⁾ crystal doubles its frequency, and a spectrometer reads the
    second-harmonic (SH) spectrum.

    Physics: the fundamental spectrum is a Gaussian amplitude
    ``A(u) = exp(-u² / (2·bandwidth²))`` sampled on ``n_bins`` bins covering
    the shaper band ``u ∈ [-1, 1]`` (frequency detuning in units of the band
    half-width).  The shaper multiplies it by ``exp(iφ(u))``; the field in
    time is its inverse FFT, zero-padded to ``2·n_bins`` so the product below
    does not wrap around; an undepleted, phase-matched χ⁽²⁾ crystal squares
    the field in time, ``E_SH(t) ∝ E(t)²``; an FFT gives the SH spectrum
    ``S(Ω) = |Σ_u A(u) A(Ω-u) exp(i[φ(u) + φ(Ω-u)])|²``, a coherent sum over
    all pairs of frequencies — strongly oscillatory in every phase.

    Input encoding: the phase mask is cut into ``in_features + n_params``
    contiguous blocks of equal width; input and parameter blocks are
    interleaved evenly across the band (:attr:`layout` gives the assignment).
    Block values are *mask pixel values* ``v`` and the written phase is
    ``φ = phase_scale · v``.  Inputs are meant to lie in ``[-1, 1]``: with the
    default ``phase_scale = 3π`` one input sweeps 6π of phase, i.e. three full
    periods of the response.  Inputs in ``[0, 1]`` work too (three π).

    Output measurement: the SH power spectrum over the detuning window
    ``|Ω| ≤ sh_band`` (the SH of the band spans ``[-2, 2]``) summed into
    ``out_features`` contiguous bins, each divided by its value for a flat
    phase (the transform-limited pulse).  By the triangle inequality a flat
    phase maximises every SH frequency, so outputs lie in ``[0, 1]`` and equal
    1 for ``x = 0, θ = 0``.  Units: dimensionless (fraction of the
    transform-limited SH power in that bin).

    θ: the ``n_params`` parameter blocks of the phase mask, in the same pixel
    units as ``x`` (phase ``phase_scale · θ``); default zeros (flat).

    Default sizes: 16 inputs, 16 parameters, 16 outputs, 128 spectral bins
    (4 bins per mask block), 256-point FFTs.
    Cost: two complex FFTs of ``2·n_bins`` points per sample plus
    ``O(n_bins · out_features)`` for the binning.

    Args:
        in_features: number of input blocks of the phase mask.
        out_features: number of spectrometer bins.
        n_params: number of trainable blocks of the phase mask (0: none).
        n_bins: spectral bins of the fundamental band (>= in_features + n_params).
        phase_scale: radians of phase per unit of mask value.
        bandwidth: rms width of the Gaussian spectral amplitude, in band half-widths.
        sh_band: half-width of the measured SH detuning window (at most 2).
    """

    name = "shg"

    def __init__(
        self,
        in_features: int = 16,
        out_features: int = 16,
        n_params: int = 16,
        n_bins: int = 128,
        phase_scale: float = 3 * math.pi,
        bandwidth: float = 0.5,
        sh_band: float = 1.5,
    ) -> None:
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.n_params = int(n_params)
        self.n_bins = int(n_bins)
        self.phase_scale = float(phase_scale)
        self.bandwidth = float(bandwidth)
        self.sh_band = float(sh_band)
        n_blocks = self.in_features + self.n_params
        if self.n_bins < n_blocks:
            raise ValueError(f"n_bins={n_bins} must be at least in_features + n_params = {n_blocks}")
        if not 0 < self.sh_band <= 2:
            raise ValueError(f"sh_band must lie in (0, 2], got {sh_band}")
        # Half-width of the SH window in SH bins (one SH bin = 2/n_bins); the
        # SH spectrum occupies bins 0 … 2·n_bins-2, centred on n_bins-1.
        self._half_window = min(round(self.sh_band * self.n_bins / 2), self.n_bins - 1)
        if 2 * self._half_window < self.out_features:
            raise ValueError(f"the SH window holds {2 * self._half_window} bins, fewer than out_features={out_features}")
        self.layout = self._interleaved_layout()
        self._flat_power = self._binned_sh_power(torch.zeros(1, self.n_bins, dtype=torch.float64))[0]

    @property
    def frequencies(self) -> Tensor:
        """Bin centres ``u`` of the fundamental band, in band half-widths, float64."""
        return (2 * torch.arange(self.n_bins, dtype=torch.float64) + 1) / self.n_bins - 1

    def _interleaved_layout(self) -> Tensor:
        """Per spectral bin, the column of ``cat(x, θ)`` that sets its phase.

        Block k of the mask belongs to whichever of the inputs and parameters
        has the k-th smallest centre position, inputs placed at ``(i + ½)/n``
        and parameters at ``(j + ½)/p``: both kinds are spread over the band.
        """
        n, p = self.in_features, self.n_params
        centres = torch.cat([(torch.arange(n) + 0.5) / n, (torch.arange(p) + 0.5) / p])
        column_of_block = torch.argsort(centres, stable=True)
        block_of_bin = torch.arange(self.n_bins) * (n + p) // self.n_bins
        return column_of_block[block_of_bin]

    def _binned_sh_power(self, phase: Tensor) -> Tensor:
        """Binned SH power, not normalised, for spectral phases ``(B, n_bins)``."""
        dtype, device = phase.dtype, phase.device
        amplitude = self._cached("amplitude", dtype, device, lambda: torch.exp(-self.frequencies**2 / (2 * self.bandwidth**2)))
        field = torch.complex(amplitude * torch.cos(phase), amplitude * torch.sin(phase))
        # Zero-padding to 2N keeps the self-convolution E² from aliasing.
        pulse = torch.fft.ifft(field, n=2 * self.n_bins, norm="ortho")
        sh_spectrum = torch.fft.fft(pulse * pulse, norm="ortho")
        # SH bin j collects the pairs k1 + k2 = j; Ω = 0 sits at j = n_bins - 1.
        centre = self.n_bins - 1
        window = sh_spectrum[:, centre - self._half_window : centre + self._half_window]
        power = power_of(window)
        binning = self._cached("binning", dtype, device, lambda: bin_matrix(2 * self._half_window, self.out_features))
        return power @ binning

    def _forward(self, x: Tensor, theta: Tensor | None) -> Tensor:
        dtype = working_dtype(x.dtype)
        values = x.to(dtype)
        if theta is not None:
            values = torch.cat([values, theta.to(dtype).expand(x.shape[0], -1)], dim=1)
        layout = self._cached("layout", torch.int64, x.device, lambda: self.layout)
        phase = values[:, layout] * self.phase_scale
        flat = self._cached("flat", dtype, x.device, lambda: self._flat_power)
        return (self._binned_sh_power(phase) / flat).to(x.dtype)

    def __repr__(self) -> str:
        return (
            f"SHG(in_features={self.in_features}, out_features={self.out_features}, n_params={self.n_params}, "
            f"n_bins={self.n_bins}, phase_scale={self.phase_scale:.4g}, bandwidth={self.bandwidth}, sh_band={self.sh_band})"
        )
