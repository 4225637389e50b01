"""The table of gradient-rule cases that tests/test_rules.py checks numerically.

One `Case` per line of the table: an op type, its attributes, its inputs, the opset, and how the
differentiated inputs are sampled (away from kinks, without ties). Inputs are
- `W(shape)`: differentiated ("wrt"), a graph input drawn by the case's sampler;
- `F(shape)`: a float graph input fed at run time but not differentiated;
- `C(value)`: a constant initializer (float constants follow the run's dtype unless `fixed`);
- `ABSENT`: an optional input left out ('').
A case may add `tail` nodes after the op (to combine several outputs, e.g. of Split); the value
explained is then the last tail output. `dynamic` declares the graph inputs with symbolic
dimensions, so the rules' run-time-shape branches are exercised.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from onnx import TensorProto

Sampler = Callable[[np.random.Generator, tuple], np.ndarray]


# -- samplers ------------------------------------------------------------------------------------
def normal(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    return rng.standard_normal(shape)


def uniform(lo: float, hi: float) -> Sampler:
    def draw(rng, shape):
        return rng.uniform(lo, hi, shape)

    return draw


def positive(lo: float = 0.5, hi: float = 2.0) -> Sampler:
    """Strictly positive values (Log, Sqrt, the base of Pow, divisors)."""
    return uniform(lo, hi)


def away(*kinks: float, margin: float = 0.05, lo: float = -2.0, hi: float = 2.0) -> Sampler:
    """Uniform on [lo, hi], redrawn wherever a value lies within `margin` of a kink."""

    def draw(rng, shape):
        x = rng.uniform(lo, hi, shape)
        while True:
            bad = np.zeros(np.shape(x), dtype=bool)
            for k in kinks:
                bad |= np.abs(x - k) < margin
            if not bad.any():
                return x
            x = np.where(bad, rng.uniform(lo, hi, np.shape(x)), x)

    return draw


def nonzero(margin: float = 0.5, scale: float = 2.0) -> Sampler:
    """Values with |x| in [margin, scale] and a random sign (divisors, Reciprocal)."""

    def draw(rng, shape):
        return rng.uniform(margin, scale, shape) * rng.choice([-1.0, 1.0], shape)

    return draw


def distinct(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    """All values distinct and at least 2/size apart, so max/min have no ties (and no near-ties)."""
    n = int(np.prod(shape))
    grid = np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1)
    return rng.permutation(grid).reshape(shape)


def ints(lo: int, hi: int) -> Sampler:
    """Integers in [lo, hi] (indices fed at run time)."""

    def draw(rng, shape):
        return rng.integers(lo, hi + 1, shape).astype(np.float64)

    return draw


def fixed(*values) -> Sampler:
    """Always the same values (a shape or slice bound fed at run time)."""

    def draw(rng, shape):
        return np.asarray(values, dtype=np.float64).reshape(shape)

    return draw


def dyadic(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    """Multiples of 1/32 in [-2, 2]: exact in float32 and float64 (Cast, whose dtypes differ)."""
    return rng.integers(-64, 65, shape) / 32.0


# -- inputs ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class In:
    kind: str  # "wrt", "feed", "const", "absent"
    shape: tuple = ()
    sample: Sampler = normal
    value: np.ndarray | None = None
    fixed: bool = False  # keep a float constant's own dtype (Resize scales are always float32)
    dtype: int | None = None  # pin a graph input's element type (Cast, int64/bool feeds); else the run's float type


def W(*shape: int, sample: Sampler = normal, dtype: int | None = None) -> In:
    return In("wrt", tuple(shape), sample, dtype=dtype)


def F(*shape: int, sample: Sampler = normal, dtype: int | None = None) -> In:
    return In("feed", tuple(shape), sample, dtype=dtype)


def C(value, fixed: bool = False, dtype=None) -> In:
    arr = np.asarray(value, dtype=dtype)
    return In("const", arr.shape, value=arr, fixed=fixed)


def I(*values: int) -> In:  # noqa: E743  (an int64 constant: shapes, axes, indices, sizes)
    return C(np.asarray(values, dtype=np.int64))


ABSENT = In("absent")
_R = np.random.default_rng(1234)  # the constants of the table (weights, BN parameters...)


def rand(*shape: int, sample: Sampler = normal) -> np.ndarray:
    return sample(_R, tuple(shape))


# -- cases -----------------------------------------------------------------------------------
@dataclass
class Case:
    op: str
    name: str
    inputs: list[In]
    attrs: dict = field(default_factory=dict)
    opset: int = 17
    n_out: int = 1
    explain: int = 0  # which output of the op is explained (when there is no tail)
    tail: list[tuple[str, list[str], dict]] = field(default_factory=list)
    dynamic: bool = False
    eps: float = 1e-6  # central-difference step
    u_sample: Sampler = normal  # direction u of the dot-product test

    @property
    def id(self) -> str:
        return f"{self.op}-{self.name}"


CASES: list[Case] = []


def case(op: str, name: str, inputs: list[In], **kw) -> None:
    CASES.append(Case(op, name, inputs, **kw))


# Elementwise arithmetic with broadcasting -------------------------------------------------------
for op in ("Add", "Sub", "Mul"):
    case(op, "same-shape", [W(2, 3, 4), W(2, 3, 4)])
    case(op, "bcast-channel", [W(2, 3, 4, 5), W(3, 1, 1)])
    case(op, "bcast-one", [W(2, 3, 4, 5), W(1)])
    case(op, "bcast-scalar", [W(), W(2, 3, 4, 5)])
    case(op, "bcast-mutual", [W(3, 1, 5), W(2, 1, 4, 1)])
    case(op, "only-a", [W(2, 3, 4), C(rand(4))])
    case(op, "only-b", [C(rand(3, 1)), W(2, 3, 4)])
    case(op, "dynamic", [W(2, 3, 4, 5), W(3, 1, 1)], dynamic=True)
case("Div", "same-shape", [W(2, 3, 4), W(2, 3, 4, sample=nonzero())])
case("Div", "bcast-channel", [W(2, 3, 4, 5), W(3, 1, 1, sample=nonzero())])
case("Div", "bcast-scalar", [W(), W(2, 3, 4, sample=nonzero())])
case("Div", "bcast-mutual", [W(3, 1, 5), W(2, 1, 4, 1, sample=nonzero())])
case("Div", "only-a", [W(2, 3, 4), C(rand(4, sample=nonzero()))])
case("Div", "only-b", [C(rand(3, 1)), W(2, 3, 4, sample=nonzero())])
case("Pow", "both", [W(2, 3, 4, sample=positive()), W(2, 3, 4, sample=uniform(-2, 2))])
case("Pow", "bcast-both", [W(2, 3, 4, 5, sample=positive()), W(3, 1, 1, sample=uniform(-2, 2))])
case("Pow", "bcast-base", [W(1, sample=positive()), W(2, 3, sample=uniform(-2, 2))])
case("Pow", "float-exponent", [W(2, 3, 4), C(3.0)])
case("Pow", "int-exponent", [W(2, 3, 4), C(np.array(2, dtype=np.int64))])
case("Pow", "only-exponent", [C(rand(3, 1, sample=positive())), W(2, 3, 4)])
case("Sum", "one", [W(2, 3)])
case("Sum", "three-bcast", [W(2, 3, 4), W(3, 1), W(4)])
case("Sum", "const-and-scalar", [W(2, 3, 4), C(rand(1, 4)), W()])
case("Neg", "plain", [W(2, 3, 4)])

# Where (data side), PRelu ------------------------------------------------------------------------
_cond = _R.random((3, 1, 5)) > 0.5
case("Where", "both-bcast", [C(_cond), W(2, 3, 4, 5), W(5)])
case("Where", "cond-bigger", [C(_R.random((2, 3, 4)) > 0.5), W(3, 1), W()])
case("Where", "only-y", [C(_cond), C(rand(4, 1)), W(2, 3, 4, 5)])
case("Where", "dynamic", [C(_cond), W(2, 3, 4, 5), W(5)], dynamic=True)
case("Where", "fed-cond", [F(3, 1, 5, sample=ints(0, 1), dtype=TensorProto.BOOL), W(2, 3, 4, 5), W(5)])
_kink0 = away(0.0)
case("PRelu", "slope-channel", [W(2, 3, 4, 5, sample=_kink0), W(3, 1, 1)])
case("PRelu", "slope-one", [W(2, 3, 4, sample=_kink0), W(1)])
case("PRelu", "slope-const", [W(2, 3, 4, sample=_kink0), C(rand(4))])
case("PRelu", "only-slope", [C(rand(2, 3, 4, sample=_kink0)), W(3, 1)])

# Smooth unary functions -------------------------------------------------------------------------
case("Exp", "plain", [W(2, 3, 4)])
case("Log", "positive", [W(2, 3, 4, sample=positive(0.2, 3.0))])
case("Sqrt", "positive", [W(2, 3, 4, sample=positive(0.2, 3.0))])
case("Reciprocal", "nonzero", [W(2, 3, 4, sample=nonzero())])
case("Abs", "away-from-0", [W(2, 3, 4, sample=_kink0)])
case("Erf", "plain", [W(2, 3, 4)])
case("Sigmoid", "plain", [W(2, 3, 4, sample=uniform(-4, 4))])
case("Tanh", "plain", [W(2, 3, 4)])

# Pass-through ops ------------------------------------------------------------------------------
case("Identity", "plain", [W(2, 3)])
case("Dropout", "opset13", [W(2, 3, 4)], opset=13)
case("Dropout", "ratio-inference", [W(2, 3, 4), C(0.3), C(np.array(False))], n_out=2, opset=13)
case("Dropout", "opset10-ratio", [W(2, 3)], attrs={"ratio": 0.2}, opset=10)
case("Dropout", "opset12-mask-output", [W(2, 3), C(0.5)], n_out=2, opset=12)
case("Cast", "float-to-double", [W(2, 3, sample=dyadic, dtype=TensorProto.FLOAT)],
     attrs={"to": TensorProto.DOUBLE}, eps=1.0, u_sample=dyadic)
case("Cast", "double-to-float", [W(2, 3, sample=dyadic, dtype=TensorProto.DOUBLE)],
     attrs={"to": TensorProto.FLOAT}, eps=1.0, u_sample=dyadic)

# Rectifiers and piecewise activations ------------------------------------------------------------
case("Relu", "away-from-0", [W(2, 3, 4, sample=_kink0)])
case("Clip", "both", [W(2, 3, 4, sample=away(-0.5, 0.7)), C(-0.5), C(0.7)], opset=13)
case("Clip", "relu6", [W(2, 3, 4, sample=away(0.0, 6.0, lo=-3, hi=9)), C(0.0), C(6.0)], opset=13)
case("Clip", "min-only", [W(2, 3, 4, sample=away(0.3)), C(0.3)], opset=13)
case("Clip", "max-only", [W(2, 3, 4, sample=away(-0.2)), ABSENT, C(-0.2)], opset=13)
case("Clip", "no-bounds", [W(2, 3)], opset=13)
case("Clip", "opset10-attrs", [W(2, 3, 4, sample=away(-0.5, 0.7))], attrs={"min": -0.5, "max": 0.7}, opset=10)
case("Clip", "opset10-relu6", [W(2, 3, 4, sample=away(0.0, 6.0, lo=-3, hi=9))], attrs={"min": 0.0, "max": 6.0}, opset=10)
case("Clip", "opset10-max-only", [W(2, 3, 4, sample=away(0.5))], attrs={"max": 0.5}, opset=10)
case("LeakyRelu", "default-alpha", [W(2, 3, 4, sample=_kink0)])
case("LeakyRelu", "alpha", [W(2, 3, 4, sample=_kink0)], attrs={"alpha": 0.3})
case("HardSigmoid", "default", [W(2, 3, 4, sample=away(-2.5, 2.5, lo=-4, hi=4))])
case("HardSigmoid", "alpha-beta", [W(2, 3, 4, sample=away(-0.8, 1.2))], attrs={"alpha": 0.5, "beta": 0.4})
case("HardSwish", "plain", [W(2, 3, 4, sample=away(-3.0, 3.0, lo=-5, hi=5))], opset=14)

# Softmax family: opset 13 normalises one axis, opset 11 every axis from `axis` on -------------------
for op in ("Softmax", "LogSoftmax"):
    case(op, "opset13-last", [W(2, 3, 4)], opset=13)
    case(op, "opset13-axis1", [W(2, 3, 4)], attrs={"axis": 1}, opset=13)
    case(op, "opset13-neg-axis", [W(2, 3, 4, 2)], attrs={"axis": -3}, opset=13)
    case(op, "opset11-default", [W(2, 3, 4)], opset=11)
    case(op, "opset11-axis1-flattens", [W(2, 3, 2, 2)], attrs={"axis": 1}, opset=11)
    case(op, "opset11-axis2", [W(2, 3, 4)], attrs={"axis": 2}, opset=11)
    case(op, "opset11-neg-axis", [W(2, 3, 2, 2)], attrs={"axis": -3}, opset=11)
    case(op, "dynamic", [W(2, 3, 4)], attrs={"axis": 1}, opset=13, dynamic=True)

# Matrix products -------------------------------------------------------------------------------
case("Gemm", "plain", [W(3, 4), W(4, 5)])
case("Gemm", "with-C-vector", [W(3, 4), W(4, 5), W(5)])
case("Gemm", "C-column", [W(3, 4), C(rand(4, 5)), W(3, 1)])
case("Gemm", "C-row", [W(3, 4), W(4, 5), W(1, 5)])
case("Gemm", "C-full", [W(3, 4), W(4, 5), W(3, 5)])
case("Gemm", "C-one", [W(3, 4), W(4, 5), W(1)])
case("Gemm", "C-scalar", [W(3, 4), W(4, 5), W()])
case("Gemm", "transA", [W(4, 3), W(4, 5), W(5)], attrs={"transA": 1})
case("Gemm", "transB", [W(3, 4), W(5, 4), W(5)], attrs={"transB": 1})
case("Gemm", "transA-transB-alpha-beta", [W(4, 3), W(5, 4), W(3, 5)],
     attrs={"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0})
case("Gemm", "alpha-only-A", [W(3, 4), C(rand(4, 5)), C(rand(5))], attrs={"alpha": -1.5, "beta": 0.25})
case("Gemm", "opset9-transB-only-B", [C(rand(2, 4)), W(5, 4), C(rand(5))], attrs={"transB": 1}, opset=9)
case("Gemm", "opset9-transA-all", [W(4, 3), W(4, 5), W(1, 1)], attrs={"transA": 1, "alpha": 2.0}, opset=9)
case("MatMul", "2d", [W(3, 4), W(4, 5)])
case("MatMul", "batched", [W(2, 3, 4), W(2, 4, 5)])
case("MatMul", "bcast-batch", [W(2, 1, 3, 4), W(3, 4, 5)])
case("MatMul", "bcast-lead", [W(3, 4), W(2, 4, 5)])
case("MatMul", "bcast-ones", [W(1, 3, 4), W(2, 1, 4, 5)])
case("MatMul", "vector-left", [W(4), W(2, 4, 5)])
case("MatMul", "vector-right", [W(2, 3, 4), W(4)])
case("MatMul", "vector-vector", [W(4), W(4)])
case("MatMul", "vector-matrix", [W(4), W(4, 5)])
case("MatMul", "only-b", [C(rand(2, 3, 4)), W(4, 5)])
case("MatMul", "dynamic", [W(2, 3, 4), W(4, 5)], dynamic=True)
case("Gemm", "dynamic", [W(3, 4), W(5, 4), W(5)], attrs={"transB": 1}, dynamic=True)

# Convolutions (weights and bias are constants: only data gradients are built) -----------------------
case("Conv", "pad1", [W(1, 2, 5, 5), C(rand(3, 2, 3, 3))], attrs={"pads": [1, 1, 1, 1]})
case("Conv", "bias-kernel-shape", [W(2, 2, 5, 4), C(rand(3, 2, 3, 2)), C(rand(3))], attrs={"kernel_shape": [3, 2]})
case("Conv", "stride2-asym-pads", [W(1, 2, 6, 7), C(rand(3, 2, 3, 3))], attrs={"strides": [2, 2], "pads": [1, 0, 1, 2]})
case("Conv", "stride2-uncovered", [W(1, 1, 6, 6), C(rand(2, 1, 3, 3))], attrs={"strides": [2, 2]})
case("Conv", "stride-hw", [W(1, 2, 7, 6), C(rand(2, 2, 2, 3))], attrs={"strides": [3, 2], "pads": [0, 1, 2, 0]})
case("Conv", "dilation2", [W(1, 2, 7, 7), C(rand(2, 2, 3, 3))], attrs={"dilations": [2, 2], "pads": [2, 1, 2, 1]})
case("Conv", "groups2", [W(1, 4, 5, 5), C(rand(6, 2, 3, 3))], attrs={"group": 2, "pads": [1, 1, 1, 1]})
case("Conv", "depthwise", [W(2, 3, 5, 5), C(rand(3, 1, 3, 3))], attrs={"group": 3, "strides": [2, 2], "pads": [1, 1, 1, 1]})
case("Conv", "same-upper", [W(1, 2, 6, 5), C(rand(2, 2, 3, 3))], attrs={"auto_pad": "SAME_UPPER", "strides": [2, 2]})
case("Conv", "same-lower", [W(1, 2, 6, 5), C(rand(2, 2, 4, 4))], attrs={"auto_pad": "SAME_LOWER", "strides": [2, 2]})
case("Conv", "same-upper-even-kernel", [W(1, 1, 5, 5), C(rand(2, 1, 2, 2))], attrs={"auto_pad": "SAME_UPPER"})
case("Conv", "valid", [W(1, 2, 7, 6), C(rand(2, 2, 3, 3))], attrs={"auto_pad": "VALID", "strides": [2, 2]})
case("Conv", "1d", [W(2, 2, 9), C(rand(3, 2, 3))], attrs={"strides": [2], "pads": [1, 2], "dilations": [2]})
case("Conv", "3d", [W(1, 1, 4, 4, 3), C(rand(2, 1, 2, 2, 2))], attrs={"pads": [1, 0, 0, 0, 1, 1]})
case("Conv", "dynamic-stride2", [W(1, 2, 7, 6), C(rand(2, 2, 3, 3))], attrs={"strides": [2, 2], "pads": [1, 1, 0, 0]},
     dynamic=True)
case("ConvTranspose", "plain", [W(1, 2, 4, 4), C(rand(2, 3, 3, 3))])
case("ConvTranspose", "bias", [W(2, 2, 3, 3), C(rand(2, 3, 2, 2)), C(rand(3))])
case("ConvTranspose", "stride2-pads-outpad", [W(1, 2, 4, 4), C(rand(2, 3, 3, 3))],
     attrs={"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]})
case("ConvTranspose", "asym-pads", [W(1, 1, 4, 5), C(rand(1, 2, 3, 3))], attrs={"strides": [2, 1], "pads": [0, 1, 2, 0]})
case("ConvTranspose", "group2", [W(1, 4, 3, 3), C(rand(4, 1, 3, 3))], attrs={"group": 2, "strides": [2, 2]})
case("ConvTranspose", "dilation2", [W(1, 2, 4, 4), C(rand(2, 2, 3, 3))], attrs={"dilations": [2, 2], "pads": [1, 1, 1, 1]})
case("ConvTranspose", "output-shape", [W(1, 2, 4, 4), C(rand(2, 1, 3, 3))], attrs={"strides": [2, 2], "output_shape": [8, 8]})
case("ConvTranspose", "output-shape-odd", [W(1, 1, 3, 3), C(rand(1, 1, 3, 3))], attrs={"strides": [2, 2], "output_shape": [6, 5]})
case("ConvTranspose", "same-upper", [W(1, 2, 3, 3), C(rand(2, 1, 4, 4))], attrs={"strides": [2, 2], "auto_pad": "SAME_UPPER"})
case("ConvTranspose", "same-lower", [W(1, 2, 3, 3), C(rand(2, 1, 4, 4))], attrs={"strides": [2, 2], "auto_pad": "SAME_LOWER"})
case("ConvTranspose", "dynamic", [W(1, 2, 4, 3), C(rand(2, 2, 3, 3))], attrs={"strides": [2, 2], "pads": [1, 0, 0, 1]},
     dynamic=True)
case("ConvTranspose", "1d", [W(2, 2, 5), C(rand(2, 3, 3))], attrs={"strides": [3], "pads": [1, 0], "output_padding": [2]})

# Pooling -----------------------------------------------------------------------------------------
case("MaxPool", "2x2-s2", [W(1, 2, 4, 4, sample=distinct)], attrs={"kernel_shape": [2, 2], "strides": [2, 2]})
case("MaxPool", "3x3-s2-p1-overlap", [W(1, 2, 5, 5, sample=distinct)],
     attrs={"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]})
case("MaxPool", "ceil-mode", [W(1, 2, 5, 5, sample=distinct)], attrs={"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1})
case("MaxPool", "ceil-mode-overlap", [W(1, 1, 6, 6, sample=distinct)],
     attrs={"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1})
case("MaxPool", "dilation2", [W(1, 2, 6, 6, sample=distinct)], attrs={"kernel_shape": [2, 2], "dilations": [2, 2]})
case("MaxPool", "same-upper", [W(1, 1, 5, 5, sample=distinct)],
     attrs={"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"})
case("MaxPool", "indices-output", [W(2, 2, 4, 4, sample=distinct)], attrs={"kernel_shape": [2, 2], "strides": [2, 2]}, n_out=2)
case("MaxPool", "indices-output-overlap", [W(2, 2, 5, 5, sample=distinct)],
     attrs={"kernel_shape": [3, 3], "strides": [1, 1]}, n_out=2)
case("MaxPool", "1d", [W(2, 3, 7, sample=distinct)], attrs={"kernel_shape": [3], "strides": [2], "pads": [1, 1]})
case("MaxPool", "same-lower-dilated", [W(1, 1, 6, 5, sample=distinct)],
     attrs={"kernel_shape": [2, 3], "strides": [2, 2], "dilations": [1, 2], "auto_pad": "SAME_LOWER"})
case("MaxPool", "opset10-scatter", [W(2, 2, 4, 4, sample=distinct)], attrs={"kernel_shape": [2, 2], "strides": [2, 2]}, opset=10)
case("MaxPool", "dynamic", [W(1, 2, 5, 5, sample=distinct)],
     attrs={"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, dynamic=True)
case("MaxPool", "opset11-no-overlap", [W(1, 2, 4, 4, sample=distinct)], attrs={"kernel_shape": [2, 2], "strides": [2, 2]}, opset=11)
case("AveragePool", "2x2-s2", [W(1, 2, 4, 4)], attrs={"kernel_shape": [2, 2], "strides": [2, 2]})
case("AveragePool", "3x3-p1-exclude-pad", [W(1, 2, 5, 5)], attrs={"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]})
case("AveragePool", "3x3-p1-include-pad", [W(1, 2, 5, 5)],
     attrs={"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1})
case("AveragePool", "ceil-mode", [W(1, 2, 5, 5)], attrs={"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1})
case("AveragePool", "ceil-mode-pads-include", [W(1, 1, 6, 6)],
     attrs={"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1, "count_include_pad": 1})
case("AveragePool", "strides-asym-pads", [W(2, 2, 7, 6)],
     attrs={"kernel_shape": [3, 2], "strides": [2, 1], "pads": [1, 0, 0, 1]})
case("AveragePool", "same-upper", [W(1, 2, 5, 5)], attrs={"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": "SAME_UPPER"})
case("AveragePool", "dilations-opset19", [W(1, 1, 6, 6)], attrs={"kernel_shape": [2, 2], "dilations": [2, 2]}, opset=19)
case("AveragePool", "1d", [W(2, 3, 8)], attrs={"kernel_shape": [3], "strides": [2], "pads": [1, 1]})
case("GlobalAveragePool", "2d", [W(2, 3, 4, 5)])
case("GlobalAveragePool", "1d", [W(2, 3, 7)])
case("GlobalAveragePool", "dynamic", [W(2, 3, 4, 5)], dynamic=True)
case("GlobalMaxPool", "2d", [W(2, 3, 4, 5, sample=distinct)])
case("GlobalMaxPool", "1d", [W(2, 3, 7, sample=distinct)])
case("GlobalMaxPool", "opset10", [W(2, 2, 3, 3, sample=distinct)], opset=10)
case("GlobalMaxPool", "dynamic", [W(2, 2, 3, 3, sample=distinct)], dynamic=True)

# Normalisation (parameters are constants, or fed but not differentiated) ---------------------------
_bn = [C(rand(3)), C(rand(3)), C(rand(3)), C(rand(3, sample=positive()))]
case("BatchNormalization", "nchw", [W(2, 3, 4, 4)] + _bn, attrs={"epsilon": 1e-3}, opset=15)
case("BatchNormalization", "nc", [W(4, 3)] + _bn, opset=15)
case("BatchNormalization", "opset9", [W(2, 3, 2, 2)] + _bn, opset=9)
case("BatchNormalization", "fed-params", [W(2, 3, 4), F(3), F(3), F(3), F(3, sample=positive())], opset=15)
case("LayerNormalization", "last-axis", [W(2, 3, 4), C(rand(4)), C(rand(4))])
case("LayerNormalization", "axis1-no-bias", [W(2, 3, 4), C(rand(3, 4))], attrs={"axis": 1, "epsilon": 1e-3})
case("LayerNormalization", "neg-axis", [W(2, 3, 2, 2), C(rand(2, 2)), C(rand(2, 2))], attrs={"axis": -2})

# Shapes and selection ---------------------------------------------------------------------------
case("Reshape", "plain", [W(2, 3, 4), I(4, -1)])
case("Reshape", "zero-dim", [W(2, 3, 4), I(0, 12, 1)])
case("Reshape", "dynamic", [W(2, 3, 4), I(-1, 6)], dynamic=True)
case("Reshape", "fed-shape", [W(2, 3, 4), F(2, sample=fixed(4, -1), dtype=TensorProto.INT64)])
case("Flatten", "default", [W(2, 3, 4)])
case("Flatten", "axis2", [W(2, 3, 4, 2)], attrs={"axis": 2})
case("Flatten", "axis0", [W(2, 3)], attrs={"axis": 0})
case("Transpose", "perm", [W(2, 3, 4)], attrs={"perm": [1, 2, 0]})
case("Transpose", "default-perm", [W(2, 3, 4)])
case("Squeeze", "opset13-axes", [W(2, 1, 3, 1), I(1, -1)], opset=13)
case("Squeeze", "opset13-all", [W(1, 3, 1, 2)], opset=13)
case("Squeeze", "opset11-attr", [W(2, 1, 3)], attrs={"axes": [1]}, opset=11)
case("Unsqueeze", "opset13", [W(2, 3), I(0, 3)], opset=13)
case("Unsqueeze", "opset11-attr", [W(2, 3)], attrs={"axes": [-1]}, opset=11)
case("Concat", "three-middle-const", [W(2, 1, 3), C(rand(2, 2, 3)), W(2, 3, 3)], attrs={"axis": 1})
case("Concat", "neg-axis-first-only", [W(2, 3, 1), W(2, 3, 2), C(rand(2, 3, 2))], attrs={"axis": -1})
case("Concat", "dynamic", [W(2, 1, 3), C(rand(2, 2, 3)), W(2, 3, 3)], attrs={"axis": 1}, dynamic=True)
case("Split", "sizes-one-unused", [W(2, 6, 3), I(1, 2, 3)], attrs={"axis": 1}, n_out=3, opset=13,
     tail=[("Mul", ["y0", "y2"], {})])
case("Split", "explain-one-output", [W(2, 6)], attrs={"axis": 1}, n_out=3, explain=1, opset=13)
case("Split", "opset11-attr", [W(4, 3)], attrs={"split": [3, 1]}, n_out=2, opset=11, tail=[("Concat", ["y1", "y0"], {"axis": 0})])
case("Split", "opset18-num-outputs", [W(2, 5)], attrs={"axis": -1, "num_outputs": 2}, n_out=2, opset=18,
     tail=[("Concat", ["y1", "y0"], {"axis": 1})])
case("Slice", "starts-ends", [W(4, 5, 6), I(1, 0), I(3, -1), I(0, 2)])
case("Slice", "neg-starts-big-end", [W(4, 5), I(-3), I(2**62), I(-1)])
case("Slice", "step2", [W(5, 7), I(0, 1), I(5, 7), I(0, 1), I(2, 3)])
case("Slice", "step-neg1", [W(4, 5), I(-1), I(-(2**62)), I(1), I(-1)])
case("Slice", "step-neg2-clamped", [W(6, 3), I(10, 0), I(0, 3), I(0, 1), I(-2, 1)])
case("Slice", "fed-bounds", [W(5, 6), F(2, sample=fixed(1, -5), dtype=TensorProto.INT64), I(4, 6), I(0, 1)])
case("Slice", "dynamic-steps", [W(5, 6), I(4, 0), I(-6, 6), I(0, 1), I(-2, 3)], dynamic=True)
case("Slice", "dynamic", [W(5, 6), I(1), I(-1), I(1)], dynamic=True)
case("Slice", "opset9-attrs", [W(4, 5)], attrs={"starts": [1, -4], "ends": [3, 100], "axes": [0, 1]}, opset=9)
case("Pad", "constant", [W(2, 3, 4), I(0, 1, 2, 0, 2, 1)])
case("Pad", "value", [W(2, 3), I(1, 0, 0, 2), C(1.5)])
case("Pad", "negative", [W(2, 5, 6), I(0, -1, 2, 0, 1, -2)])
case("Pad", "opset18-axes", [W(2, 3, 4), I(1, -1, 2, 0), ABSENT, I(1, -1)], opset=18)
case("Pad", "opset10-attrs", [W(3, 4)], attrs={"pads": [1, -1, 0, 2]}, opset=10)
case("Gather", "axis0-repeated", [W(4, 3), I(2, 0, 2)])
case("Gather", "axis1-negative", [W(2, 4, 3), I(-1, 0, -4)], attrs={"axis": 1})
case("Gather", "2d-indices", [W(5, 2), C(np.array([[0, 4], [4, -1]], dtype=np.int64))])
case("Gather", "scalar-index", [W(3, 4), C(np.array(-2, dtype=np.int64))], attrs={"axis": -1})
case("Gather", "distinct-indices", [W(5, 3), I(3, 1)])
case("Gather", "fed-indices", [W(4, 3), F(2, 3, sample=ints(-4, 3), dtype=TensorProto.INT64)], attrs={"axis": 0})
case("Gather", "dynamic", [W(4, 3), I(2, -1, 2)], attrs={"axis": 0}, dynamic=True)
case("Expand", "channel", [W(3, 1), I(2, 3, 4)])
case("Expand", "one", [W(1), I(2, 3)])
case("Expand", "input-bigger", [W(2, 3, 1), I(3, 1, 1, 4)])
case("Expand", "dynamic", [W(3, 1), I(2, 3, 4)], dynamic=True)
case("Expand", "fed-shape", [W(3, 1), F(3, sample=fixed(2, 1, 4), dtype=TensorProto.INT64)], dynamic=True)

# Resize / Upsample --------------------------------------------------------------------------------
def _scales(*s: float) -> In:
    return C(np.asarray(s, dtype=np.float32), fixed=True)


case("Resize", "nearest-scales", [W(1, 2, 3, 4), ABSENT, _scales(1, 1, 2, 2)], attrs={"mode": "nearest"}, opset=13)
case("Resize", "nearest-sizes-round", [W(1, 1, 4, 5), ABSENT, ABSENT, I(1, 1, 7, 3)],
     attrs={"mode": "nearest", "nearest_mode": "round_prefer_ceil"}, opset=13)
case("Resize", "nearest-asym-floor", [W(1, 2, 3, 3), ABSENT, _scales(1, 1, 1.5, 2.5)],
     attrs={"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}, opset=13)
case("Resize", "linear-half-pixel", [W(1, 2, 3, 4), ABSENT, _scales(1, 1, 2, 2)], attrs={"mode": "linear"}, opset=13)
case("Resize", "linear-align-corners-sizes", [W(1, 2, 3, 4), ABSENT, ABSENT, I(1, 2, 5, 7)],
     attrs={"mode": "linear", "coordinate_transformation_mode": "align_corners"}, opset=13)
case("Resize", "linear-asymmetric", [W(1, 1, 3, 4), ABSENT, _scales(1, 1, 2, 1.5)],
     attrs={"mode": "linear", "coordinate_transformation_mode": "asymmetric"}, opset=13)
case("Resize", "linear-pytorch-half-pixel-down", [W(1, 1, 6, 4), ABSENT, ABSENT, I(1, 1, 3, 2)],
     attrs={"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"}, opset=13)
case("Resize", "linear-3d-input", [W(2, 3, 4), ABSENT, _scales(1, 2, 2)], attrs={"mode": "linear"}, opset=13)
case("Resize", "cubic", [W(1, 1, 4, 4), ABSENT, _scales(1, 1, 2, 2)], attrs={"mode": "cubic"}, opset=13)
case("Resize", "opset19-axes", [W(1, 2, 3, 4), ABSENT, _scales(2, 1.5)], attrs={"mode": "linear", "axes": [2, 3]}, opset=19)
case("Resize", "opset11-roi-input", [W(1, 1, 3, 3), C(np.zeros(0, dtype=np.float32), fixed=True), _scales(1, 1, 2, 2)],
     attrs={"mode": "nearest"}, opset=11)
case("Resize", "nearest-ceil-sizes", [W(1, 1, 3, 5), ABSENT, ABSENT, I(1, 1, 5, 7)],
     attrs={"mode": "nearest", "nearest_mode": "ceil", "coordinate_transformation_mode": "half_pixel"}, opset=13)
case("Resize", "cubic-a-exclude-outside", [W(1, 1, 4, 5), ABSENT, _scales(1, 1, 1.5, 2)],
     attrs={"mode": "cubic", "cubic_coeff_a": -0.5, "exclude_outside": 1}, opset=13)
case("Resize", "tf-crop-and-resize", [W(1, 1, 4, 5), C(np.array([0, 0, 0.2, 0.1, 1, 1, 0.9, 1.3], np.float32), fixed=True),
                                      ABSENT, I(1, 1, 3, 6)],
     attrs={"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize", "extrapolation_value": 2.5},
     opset=13)
case("Resize", "opset18-antialias-down", [W(1, 2, 8, 6), ABSENT, _scales(1, 1, 0.5, 0.6)],
     attrs={"mode": "linear", "antialias": 1}, opset=18)
case("Resize", "opset18-sizes-axes", [W(1, 2, 3, 4), ABSENT, ABSENT, I(5, 3)], attrs={"mode": "linear", "axes": [3, 2]},
     opset=18)
case("Upsample", "nearest", [W(1, 2, 3, 3), _scales(1, 1, 2, 3)], attrs={"mode": "nearest"}, opset=9)
case("Upsample", "linear", [W(1, 1, 3, 4), _scales(1, 1, 2, 2)], attrs={"mode": "linear"}, opset=9)
case("Upsample", "linear-fractional", [W(1, 1, 3, 4), _scales(1, 1, 1.5, 2.5)], attrs={"mode": "linear"}, opset=9)
case("Upsample", "nearest-fractional", [W(1, 1, 3, 4), _scales(1, 1, 2.5, 1.7)], attrs={"mode": "nearest"}, opset=9)
case("Upsample", "opset7-scales-attr", [W(1, 1, 3, 4)], attrs={"mode": "linear", "scales": [1.0, 1.0, 1.7, 2.0]}, opset=7)
case("Resize", "opset10-nearest", [W(1, 1, 3, 4), _scales(1, 1, 2.5, 1.5)], attrs={"mode": "nearest"}, opset=10)
case("Resize", "opset10-linear", [W(1, 2, 3, 4), _scales(1, 1, 2, 1.5)], attrs={"mode": "linear"}, opset=10)

# Reductions: axes as attribute (opset 13; ReduceSum takes an input from 13) or input (opset 18) ----
for op in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin"):
    kinky = op in ("ReduceMax", "ReduceMin")
    x = (lambda *s: W(*s, sample=distinct)) if kinky else W
    if op == "ReduceSum":
        case(op, "opset13-axes-keepdims", [x(2, 3, 4), I(1)], opset=13)
        case(op, "opset13-neg-axes-nokeep", [x(2, 3, 4), I(-1, 0)], attrs={"keepdims": 0}, opset=13)
        case(op, "opset11-attr", [x(2, 3, 4)], attrs={"axes": [1, 2], "keepdims": 0}, opset=11)
    else:
        case(op, "opset13-axes-keepdims", [x(2, 3, 4)], attrs={"axes": [1]}, opset=13)
        case(op, "opset13-neg-axes-nokeep", [x(2, 3, 4)], attrs={"axes": [-1, 0], "keepdims": 0}, opset=13)
        case(op, "opset18-input-axes", [x(2, 3, 4), I(0, 2)], attrs={"keepdims": 0}, opset=18)
    case(op, "all-axes-nokeep", [x(2, 3, 4)], attrs={"keepdims": 0}, opset=13)
    case(op, "opset18-all-keep", [x(2, 3, 4)], opset=18)
    case(op, "opset18-noop-empty-axes", [x(2, 3)], attrs={"noop_with_empty_axes": 1}, opset=18)
case("ReduceMean", "dynamic", [W(2, 3, 4)], attrs={"axes": [0, 2]}, opset=13, dynamic=True)
case("ReduceSum", "dynamic", [W(2, 3, 4), I(2)], attrs={"keepdims": 0}, opset=13, dynamic=True)
case("ReduceMax", "dynamic", [W(2, 3, 4, sample=distinct), I(1)], opset=18, dynamic=True)


# Issue 12, activations, elementwise and reductions (Elu ... ReduceProd) -----------------------------
# (end of the activations/elementwise/reduce section)

# Issue 12, normalisation, shape and indexing ops (InstanceNormalization ... ScatterND) -------------
# (end of the normalisation/shape/indexing section)

# Issue 12, pooling at every opset, function bodies and float16 ---------------------------------------
# (end of the pooling/function-body section)

# Issue 12, recurrent cells and control flow (LSTM, GRU, RNN, Loop, Scan, If) -----------------------
# (end of the recurrent/control-flow section)
