"""Gradient estimators: what supplies the backward pass a black box lacks.

The contract every estimator follows is written once, in
:mod:`blackgrad.estimators.base`.
"""

from .base import VJP, Estimator, GroupedProber, ProberLike, VJPQuery
from .broyden import Broyden
from .complex_step import ComplexStep
from .exact import Exact
from .finite_difference import FiniteDifference
from .least_squares import LeastSquares
from .spsa import SPSA
from .straight_through import StraightThrough
from .digital_twin import DigitalTwin
from .learned import LearnedEstimator
from .learned_jacobian import LearnedJacobian
from .learned_vjp import LearnedVJP
from .unbiased import Unbiased

__all__ = [
    "Estimator",
    "VJPQuery",
    "VJP",
    "GroupedProber",
    "ProberLike",
    "Exact",
    "FiniteDifference",
    "ComplexStep",
    "SPSA",
    "LeastSquares",
    "Broyden",
    "StraightThrough",
    "LearnedEstimator",
    "DigitalTwin",
    "LearnedJacobian",
    "LearnedVJP",
    "Unbiased",
]
