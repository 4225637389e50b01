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
def lattice(k: int, of: int, points: int = 64) -> Sampler:
    """Distinct values in [-2, 2] on a lattice of points * of steps, input k of `of` taking the
    residue k: no two inputs of a Min/Max are ever equal or within 0.02 of each other (no ties)."""

    def draw(rng, shape):
        j = rng.choice(points, int(np.prod(shape)), replace=False)
        return ((j * of + k) / (points * of) * 4.0 - 2.0).reshape(shape)

    return draw


def with_zeros(fraction: float = 0.3) -> Sampler:
    """Normal values with about `fraction` of them exactly 0 (ReduceProd, whose gradient may not divide by x)."""

    def draw(rng, shape):
        x = rng.standard_normal(shape)
        return np.where(rng.random(shape) < fraction, 0.0, x)

    return draw


_R12 = np.random.default_rng(12)  # this section's constants (leaves _R's draws to the sections below)


# Exponential units, smooth gates, thresholds (Where in the gradient: opset >= 9) -------------------
case("Elu", "default-alpha", [W(2, 3, 4, sample=_kink0)], opset=13)
case("Elu", "alpha", [W(2, 3, 4, sample=_kink0)], attrs={"alpha": 0.5}, opset=13)
case("Elu", "opset22", [W(2, 3, 4, sample=_kink0)], attrs={"alpha": 1.5}, opset=22)
case("Selu", "default", [W(2, 3, 4, sample=_kink0)], opset=13)
case("Selu", "alpha-gamma", [W(2, 3, 4, sample=_kink0)], attrs={"alpha": 1.2, "gamma": 0.8}, opset=22)
case("Celu", "default-alpha", [W(2, 3, 4, sample=_kink0)], opset=12)
case("Celu", "alpha", [W(2, 3, 4, sample=away(0.0, lo=-4, hi=3))], attrs={"alpha": 2.0}, opset=12)
case("Gelu", "exact", [W(2, 3, 4, sample=uniform(-3, 3))], opset=20)
case("Gelu", "exact-explicit", [W(2, 3, 4)], attrs={"approximate": "none"}, opset=20)
case("Gelu", "tanh", [W(2, 3, 4, sample=uniform(-3, 3))], attrs={"approximate": "tanh"}, opset=20)
case("Mish", "opset18", [W(2, 3, 4, sample=uniform(-3, 3))], opset=18)
case("Mish", "opset22", [W(2, 3, 4)], opset=22)
case("Softplus", "plain", [W(2, 3, 4, sample=uniform(-3, 3))], opset=13)
case("Softplus", "opset22", [W(2, 3, 4)], opset=22)
case("Softsign", "plain", [W(2, 3, 4, sample=_kink0)], opset=13)
case("Softsign", "opset22", [W(2, 3, 4, sample=_kink0)], opset=22)
case("Swish", "default-alpha", [W(2, 3, 4, sample=uniform(-3, 3))], opset=24)
case("Swish", "alpha", [W(2, 3, 4, sample=uniform(-3, 3))], attrs={"alpha": 0.5}, opset=24)
case("ThresholdedRelu", "default-alpha", [W(2, 3, 4, sample=away(1.0, lo=-1, hi=3))], opset=10)
case("ThresholdedRelu", "alpha", [W(2, 3, 4, sample=away(0.3))], attrs={"alpha": 0.3}, opset=22)
case("Shrink", "default", [W(2, 3, 4, sample=away(-0.5, 0.5))], opset=9)
case("Shrink", "lambd-bias", [W(2, 3, 4, sample=away(-0.3, 0.3))], attrs={"lambd": 0.3, "bias": 0.1}, opset=9)

# Min, Max (to the input attaining the extremum; inputs on disjoint lattices, so no ties), Mean ------
for op in ("Max", "Min"):
    case(op, "two-same-shape", [W(2, 3, 4, sample=lattice(0, 2)), W(2, 3, 4, sample=lattice(1, 2))], opset=13)
    case(op, "three-bcast", [W(2, 3, 4, sample=lattice(0, 3)), W(3, 1, sample=lattice(1, 3)), W(4, sample=lattice(2, 3))],
         opset=13)
    case(op, "one", [W(2, 3)], opset=13)
    case(op, "const-other", [W(2, 3, 4, sample=lattice(0, 2)), C(lattice(1, 2)(_R12, (4,)))], opset=13)
    case(op, "opset8-bcast", [W(2, 3, sample=lattice(0, 2)), W(3, sample=lattice(1, 2))], opset=8)
    case(op, "opset7-same-shape", [W(2, 3, sample=lattice(0, 2)), W(2, 3, sample=lattice(1, 2))], opset=7)
    case(op, "dynamic", [W(2, 3, 4, sample=lattice(0, 3)), W(3, 1, sample=lattice(1, 3)), W(4, sample=lattice(2, 3))],
         opset=13, dynamic=True)
case("Mean", "one", [W(2, 3)], opset=13)
case("Mean", "two-same-shape", [W(2, 3, 4), W(2, 3, 4)], opset=13)
case("Mean", "three-bcast", [W(2, 3, 4), W(3, 1), W()], opset=13)
case("Mean", "const-other", [C(_R12.standard_normal((3, 1))), W(2, 3, 4)], opset=8)
case("Mean", "dynamic", [W(2, 3, 4), W(3, 1), W(4)], opset=13, dynamic=True)

# Trigonometric and hyperbolic functions, sampled inside their domains --------------------------------
case("Sin", "plain", [W(2, 3, 4, sample=uniform(-4, 4))], opset=7)
case("Cos", "plain", [W(2, 3, 4, sample=uniform(-4, 4))], opset=7)
case("Tan", "plain", [W(2, 3, 4, sample=uniform(-1.2, 1.2))], opset=7)
case("Asin", "inside", [W(2, 3, 4, sample=uniform(-0.9, 0.9))], opset=7)
case("Acos", "inside", [W(2, 3, 4, sample=uniform(-0.9, 0.9))], opset=7)
case("Atan", "plain", [W(2, 3, 4, sample=uniform(-3, 3))], opset=7)
case("Sinh", "plain", [W(2, 3, 4)], opset=9)
case("Cosh", "plain", [W(2, 3, 4)], opset=9)
case("Asinh", "plain", [W(2, 3, 4, sample=uniform(-3, 3))], opset=9)
case("Acosh", "above-1", [W(2, 3, 4, sample=uniform(1.2, 3.0))], opset=9)
case("Atanh", "inside", [W(2, 3, 4, sample=uniform(-0.9, 0.9))], opset=9)
for op, sample in (("Sin", uniform(-4, 4)), ("Cos", uniform(-4, 4)), ("Tan", uniform(-1.2, 1.2)),
                   ("Asin", uniform(-0.9, 0.9)), ("Acos", uniform(-0.9, 0.9)), ("Atan", normal), ("Sinh", normal),
                   ("Cosh", normal), ("Asinh", normal), ("Acosh", uniform(1.2, 3.0)), ("Atanh", uniform(-0.9, 0.9))):
    case(op, "opset22", [W(2, 3, sample=sample)], opset=22)

# Piecewise constant: zero gradient, sampled away from the jumps (central differences see 0 too) -------
_integers = away(-2.0, -1.0, 0.0, 1.0, 2.0, lo=-2.5, hi=2.5)
_halves = away(-1.5, -0.5, 0.5, 1.5, lo=-2.0, hi=2.0)
case("Floor", "away-from-integers", [W(2, 3, 4, sample=_integers)], opset=13)
case("Floor", "opset9", [W(2, 3, sample=_integers)], opset=9)
case("Floor", "dynamic", [W(2, 3, 4, sample=_integers)], opset=13, dynamic=True)
case("Ceil", "away-from-integers", [W(2, 3, 4, sample=_integers)], opset=13)
case("Ceil", "opset9", [W(2, 3, sample=_integers)], opset=9)
case("Round", "away-from-halves", [W(2, 3, 4, sample=_halves)], opset=11)
case("Round", "opset22", [W(2, 3, sample=_halves)], opset=22)
case("Sign", "away-from-0", [W(2, 3, 4, sample=_kink0)], opset=13)
case("Sign", "opset9-dynamic", [W(2, 3, sample=_kink0)], opset=9, dynamic=True)

# The rest of the Reduce family: axes an attribute before opset 18, an input from 18 ------------------
_reduce_samples = {"ReduceL1": away(0.0), "ReduceL2": normal, "ReduceLogSumExp": normal, "ReduceSumSquare": normal,
                   "ReduceProd": normal, "ReduceLogSum": positive(0.2, 2.0)}
for op, sample in _reduce_samples.items():
    _wx = (lambda *s, sample=sample: W(*s, sample=sample))
    case(op, "opset13-axes-keepdims", [_wx(2, 3, 4)], attrs={"axes": [1]}, opset=13)
    case(op, "opset13-neg-axes-nokeep", [_wx(2, 3, 4)], attrs={"axes": [-1, 0], "keepdims": 0}, opset=13)
    case(op, "opset11-attr", [_wx(2, 3, 4)], attrs={"axes": [1, 2], "keepdims": 0}, opset=11)
    case(op, "opset18-input-axes", [_wx(2, 3, 4), I(0, 2)], attrs={"keepdims": 0}, opset=18)
    case(op, "all-axes-nokeep", [_wx(2, 3, 4)], attrs={"keepdims": 0}, opset=13)
    case(op, "opset18-all-keep", [_wx(2, 3, 4)], opset=18)
    case(op, "opset18-noop-empty-axes", [_wx(2, 3)], attrs={"noop_with_empty_axes": 1}, opset=18)
    case(op, "opset18-empty-axes-input", [_wx(2, 3), I()], attrs={"noop_with_empty_axes": 1}, opset=18)
    if op != "ReduceProd":  # ReduceProd needs static sizes on the reduced axes (see reduce.py)
        case(op, "dynamic", [_wx(2, 3, 4), I(1)], attrs={"keepdims": 0}, opset=18, dynamic=True)
case("ReduceProd", "zeros-in-x", [W(3, 4, 5, sample=with_zeros(0.3))], attrs={"axes": [2]}, opset=13)
case("ReduceProd", "zeros-two-axes", [W(3, 4, 5, sample=with_zeros(0.15)), I(1, 2)], opset=18)
case("ReduceProd", "odd-sizes", [W(2, 5, 7, sample=uniform(0.5, 1.5))], attrs={"axes": [1, 2], "keepdims": 0}, opset=13)
case("ReduceProd", "size-one-axis", [W(2, 1, 3)], attrs={"axes": [1]}, opset=13)
case("ReduceProd", "opset9-attr", [W(2, 3, 4)], attrs={"axes": [2, 0]}, opset=9)
case("ReduceProd", "opset10", [W(2, 3, 4, sample=with_zeros(0.2))], attrs={"axes": [1], "keepdims": 0}, opset=10)
case("ReduceL2", "opset9-attr", [W(2, 3, 4)], attrs={"axes": [1]}, opset=9)
# (end of the activations/elementwise/reduce section)

# Issue 12, normalisation, shape and indexing ops (InstanceNormalization ... ScatterND) -------------
# Instance/Group/MeanVariance/Lp normalisation and LRN: data gradients, parameters constant.
case("InstanceNormalization", "nchw", [W(2, 3, 4, 4), C(rand(3)), C(rand(3))], attrs={"epsilon": 1e-3})
case("InstanceNormalization", "1d", [W(2, 3, 5), C(rand(3)), C(rand(3))])
case("InstanceNormalization", "3d-opset7", [W(1, 2, 3, 2, 2), C(rand(2)), C(rand(2))], opset=7)
case("InstanceNormalization", "fed-params", [W(2, 3, 4), F(3), F(3)])
case("InstanceNormalization", "dynamic", [W(2, 3, 4, 3), C(rand(3)), C(rand(3))], dynamic=True)
case("GroupNormalization", "opset18-per-group", [W(2, 6, 3, 2), C(rand(3)), C(rand(3))], attrs={"num_groups": 3}, opset=18)
case("GroupNormalization", "opset18-1d-eps", [W(2, 4, 5), C(rand(2)), C(rand(2))],
     attrs={"num_groups": 2, "epsilon": 1e-2}, opset=18)
case("GroupNormalization", "opset21-per-channel", [W(2, 6, 3, 2), C(rand(6)), C(rand(6))], attrs={"num_groups": 3}, opset=21)
case("GroupNormalization", "opset21-one-group", [W(2, 4, 3, 3), C(rand(4)), C(rand(4))], attrs={"num_groups": 1}, opset=21)
case("GroupNormalization", "opset21-dynamic", [W(2, 6, 2, 3), C(rand(6)), C(rand(6))], attrs={"num_groups": 2}, opset=21,
     dynamic=True)
case("MeanVarianceNormalization", "default-axes", [W(2, 3, 4, 4)], opset=13)
case("MeanVarianceNormalization", "axes-1", [W(2, 5, 3)], attrs={"axes": [1]}, opset=13)
case("MeanVarianceNormalization", "opset9-spatial", [W(2, 3, 3, 4)], attrs={"axes": [2, 3]}, opset=9)
case("MeanVarianceNormalization", "dynamic", [W(2, 3, 4, 4)], attrs={"axes": [0, 2, -1]}, opset=18, dynamic=True)
case("LpNormalization", "p2-default-axis", [W(2, 3, 4)])
case("LpNormalization", "p1-axis1", [W(2, 3, 4, sample=_kink0)], attrs={"p": 1, "axis": 1})
case("LpNormalization", "p2-axis0-opset22", [W(3, 4)], attrs={"p": 2, "axis": 0}, opset=22)
case("LpNormalization", "p1-dynamic", [W(2, 5, sample=_kink0)], attrs={"p": 1}, dynamic=True)
case("LRN", "alexnet-size5", [W(2, 7, 3, 3)], attrs={"size": 5, "alpha": 0.3, "beta": 0.75, "bias": 2.0})
case("LRN", "size1", [W(1, 3, 2, 3)], attrs={"size": 1, "alpha": 0.5, "beta": 0.6, "bias": 1.5})
case("LRN", "defaults-size3", [W(2, 4, 2, 2)], attrs={"size": 3})
case("LRN", "opset9-size-exceeds-channels", [W(1, 3, 3, 2)], attrs={"size": 5, "alpha": 0.4, "beta": 1.2}, opset=9)
case("LRN", "dynamic", [W(1, 5, 3, 3)], attrs={"size": 3, "alpha": 0.3, "beta": 0.75}, dynamic=True)
# Tile, DepthToSpace/SpaceToDepth, CumSum, Trilu (data side).
case("Tile", "const-repeats", [W(2, 3), I(2, 3)])
case("Tile", "3d-with-ones", [W(2, 1, 3), I(1, 3, 2)], opset=13)
case("Tile", "fed-repeats", [W(2, 3), F(2, sample=fixed(3, 2), dtype=TensorProto.INT64)])
case("Tile", "dynamic", [W(2, 3, 2), I(2, 1, 2)], dynamic=True)
case("Tile", "dynamic-fed-repeats", [W(3, 2), F(2, sample=fixed(1, 3), dtype=TensorProto.INT64)], dynamic=True)
case("Tile", "opset7", [W(2, 2), I(2, 2)], opset=7)
case("DepthToSpace", "dcr", [W(1, 8, 2, 3)], attrs={"blocksize": 2, "mode": "DCR"}, opset=13)
case("DepthToSpace", "crd", [W(2, 8, 2, 3)], attrs={"blocksize": 2, "mode": "CRD"}, opset=13)
case("DepthToSpace", "crd-block3-opset11", [W(1, 18, 2, 2)], attrs={"blocksize": 3, "mode": "CRD"}, opset=11)
case("DepthToSpace", "opset9-default-dcr", [W(2, 4, 2, 2)], attrs={"blocksize": 2}, opset=9)
case("DepthToSpace", "crd-dynamic", [W(1, 8, 3, 2)], attrs={"blocksize": 2, "mode": "CRD"}, opset=13, dynamic=True)
case("DepthToSpace", "dcr-dynamic", [W(2, 4, 2, 3)], attrs={"blocksize": 2}, opset=13, dynamic=True)
case("SpaceToDepth", "block2", [W(1, 2, 4, 6)], attrs={"blocksize": 2}, opset=13)
case("SpaceToDepth", "block3-opset9", [W(2, 1, 3, 6)], attrs={"blocksize": 3}, opset=9)
case("SpaceToDepth", "dynamic", [W(1, 3, 4, 2)], attrs={"blocksize": 2}, opset=13, dynamic=True)
case("CumSum", "axis0", [W(3, 4), C(np.array(0, dtype=np.int64))], opset=14)
case("CumSum", "exclusive", [W(2, 5), C(np.array(1, dtype=np.int64))], attrs={"exclusive": 1}, opset=14)
case("CumSum", "reverse-neg-axis", [W(2, 3, 4), C(np.array(-2, dtype=np.int64))], attrs={"reverse": 1}, opset=14)
case("CumSum", "exclusive-reverse-opset11", [W(4, 3), C(np.array(0, dtype=np.int32))],
     attrs={"exclusive": 1, "reverse": 1}, opset=11)
case("CumSum", "dynamic", [W(2, 5), C(np.array(1, dtype=np.int64))], attrs={"reverse": 1}, opset=14, dynamic=True)
case("Trilu", "upper-default", [W(3, 4)], opset=14)
case("Trilu", "lower-k-neg", [W(2, 4, 3), C(np.array(-1, dtype=np.int64))], attrs={"upper": 0}, opset=14)
case("Trilu", "upper-k2", [W(4, 5), C(np.array(2, dtype=np.int64))], opset=14)
case("Trilu", "lower-dynamic", [W(2, 3, 3)], attrs={"upper": 0}, opset=14, dynamic=True)
# Gather family (data side) and scatters (data and updates sides; unique indices for reduction none).
def _ix(*rows) -> In:
    return C(np.array(rows, dtype=np.int64))


case("Gather", "opset9-distinct", [W(5, 3), I(3, -1)], opset=9)
case("Gather", "opset13-repeated-one-hot", [W(4, 3), I(2, 0, 2, -2)], opset=13)
case("Gather", "opset13-fed-indices-axis1", [W(2, 4, 3), F(2, 3, sample=ints(-4, 3), dtype=TensorProto.INT64)],
     attrs={"axis": 1}, opset=13)
case("Gather", "opset11-fed-scalar-last-axis", [W(2, 3, 4), F(sample=ints(-4, 3), dtype=TensorProto.INT64)],
     attrs={"axis": -1}, opset=11)
case("Gather", "opset13-dynamic-int32-indices", [W(3, 4, 2), F(5, sample=ints(-4, 3), dtype=TensorProto.INT32)],
     attrs={"axis": 1}, opset=13, dynamic=True)
case("Gather", "opset11-scalar-negative", [W(2, 4), C(np.array(-3, dtype=np.int64))], attrs={"axis": 1}, opset=11)
case("GatherElements", "axis0-repeated", [W(3, 4), _ix([0, 2, -1, 1], [2, 0, 0, -3])])
case("GatherElements", "neg-axis-distinct-opset13", [W(2, 4), _ix([3, 0], [-1, 1])], attrs={"axis": -1}, opset=13)
case("GatherElements", "3d-smaller-indices", [W(2, 3, 4), C(rand(2, 2, 4, sample=ints(-3, 2)).astype(np.int64))],
     attrs={"axis": 1})
case("GatherElements", "fed-indices", [W(3, 4), F(2, 4, sample=ints(-3, 2), dtype=TensorProto.INT64)])
case("GatherElements", "dynamic", [W(3, 4), _ix([0, 2, -1, 1], [2, 0, 0, -3])], dynamic=True)
case("GatherND", "b0-elements", [W(3, 4), _ix([0, 1], [2, -1], [1, 3])], opset=13)
case("GatherND", "b0-slices-opset11", [W(3, 4, 2), _ix([2], [0])], opset=11)
case("GatherND", "b0-repeated", [W(3, 4), _ix([0, 1], [0, 1], [2, 2])])
case("GatherND", "b1-repeated", [W(2, 3, 4), C(np.array([[[2], [0]], [[1], [1]]], dtype=np.int64))], attrs={"batch_dims": 1})
case("GatherND", "b1-distinct-opset13", [W(2, 3, 4), C(np.array([[[2, 1], [0, 3]], [[1, 0], [1, -1]]], dtype=np.int64))],
     attrs={"batch_dims": 1}, opset=13)
case("GatherND", "fed-indices", [W(3, 4), F(3, 2, sample=ints(0, 2), dtype=TensorProto.INT64)])
case("GatherND", "b1-dynamic", [W(2, 3, 4), C(np.array([[[2], [0]], [[1], [1]]], dtype=np.int64))], attrs={"batch_dims": 1},
     dynamic=True)
case("ScatterElements", "axis0-both", [W(3, 4), _ix([1, 0, 2, 0], [2, 2, 1, 1]), W(2, 4)])
case("ScatterElements", "neg-axis-data-only-opset11", [W(2, 5), _ix([-1, 0], [2, 1]), C(rand(2, 2))], attrs={"axis": -1},
     opset=11)
case("ScatterElements", "updates-only", [C(rand(3, 4)), _ix([1, 0, 2, -1]), W(1, 4)], opset=13)
case("ScatterElements", "opset16-add-repeated", [W(3, 4), _ix([1, 1, 2, 0], [1, 2, 2, 0]), W(2, 4)],
     attrs={"reduction": "add"}, opset=16)
case("ScatterElements", "fed-indices", [W(3, 4), F(1, 4, sample=fixed(2, 0, 1, 1), dtype=TensorProto.INT64), W(1, 4)])
case("ScatterElements", "dynamic", [W(3, 4), _ix([1, 0, 2, 0], [2, 2, 1, 1]), W(2, 4)], attrs={"axis": 0}, dynamic=True)
case("Scatter", "opset9-data-only", [W(3, 3), _ix([2, 0, 1]), C(rand(1, 3))], opset=9)
case("ScatterND", "elements", [W(4, 3), _ix([0, 1], [3, 2], [1, 0]), W(3)])
case("ScatterND", "slices-opset11", [W(4, 3), _ix([2], [0]), W(2, 3)], opset=11)
case("ScatterND", "neg-indices-updates-only", [C(rand(4, 3)), _ix([-1], [1]), W(2, 3)], opset=13)
case("ScatterND", "opset16-add-repeated", [W(4, 3), _ix([1], [1], [3]), W(3, 3)], attrs={"reduction": "add"}, opset=16)
case("ScatterND", "fed-indices", [W(4, 3), F(2, 1, sample=fixed(3, 1), dtype=TensorProto.INT64), W(2, 3)])
case("ScatterND", "dynamic", [W(2, 3, 2), _ix([[0, 2]], [[1, 0]]), W(2, 1, 2)], dynamic=True)
# Einsum: each float operand's gradient is an Einsum of g with the others.
case("Einsum", "matmul", [W(3, 4), W(4, 5)], attrs={"equation": "ij,jk->ik"}, opset=12)
case("Einsum", "batched-bilinear", [W(2, 3, 4), W(2, 4, 5)], attrs={"equation": "bij, bjk -> bik"}, opset=13)
case("Einsum", "three-operands", [W(2, 3), W(3, 4), W(4, 2)], attrs={"equation": "ij,jk,kl->il"})
case("Einsum", "implicit-output", [W(3, 4), W(4, 5)], attrs={"equation": "ij,jk"})
case("Einsum", "mixed-case-labels", [W(2, 3), W(3, 4)], attrs={"equation": "aj,jB->Ba"})
case("Einsum", "outer-product", [W(3), W(4)], attrs={"equation": "i,j->ij"})
case("Einsum", "summed-by-one-operand", [W(3, 4), W(4, 5)], attrs={"equation": "ij,kl->ik"})
case("Einsum", "transpose", [W(2, 3, 4)], attrs={"equation": "abc->cab"})
case("Einsum", "sum-all", [W(2, 3)], attrs={"equation": "ij->"})
case("Einsum", "one-operand-partial-sum", [W(2, 3, 4)], attrs={"equation": "ijk->ki"})
case("Einsum", "ellipsis-attention", [W(2, 2, 3, 4), W(2, 2, 5, 4)], attrs={"equation": "...qd,...kd->...qk"})
case("Einsum", "ellipsis-broadcast", [W(1, 3, 2, 4), W(2, 1, 4, 3)], attrs={"equation": "...ij,...jk->...ik"})
case("Einsum", "ellipsis-implicit", [W(2, 3, 4), W(4, 5)], attrs={"equation": "...j,jk"})
case("Einsum", "ellipsis-one-sided", [W(2, 3, 4), W(4, 5)], attrs={"equation": "...j,jk->...k"})
case("Einsum", "label-broadcast", [W(1, 3, 4), W(2, 4, 1)], attrs={"equation": "bij,bjk->bik"})
case("Einsum", "only-second", [C(rand(3, 4)), W(4, 5)], attrs={"equation": "ij,jk->ki"})
case("Einsum", "dynamic", [W(2, 3, 4), W(4, 5)], attrs={"equation": "bij,jk->bik"}, dynamic=True)
case("Einsum", "dynamic-ellipsis-broadcast", [W(1, 3, 4), W(2, 4, 2)], attrs={"equation": "...ij,...jk->...ik"},
     dynamic=True)
# (end of the normalisation/shape/indexing section)

# Issue 12, Pad modes (reflect, edge, wrap) --------------------------------------------------------
# Border strips of g added back onto the elements they copy; negative pads crop first (onnxruntime's
# order); static sizes fold with Pad, run-time sizes (dynamic) with Concat; wrap is opset 19 on.
case("Pad", "reflect-nchw", [W(2, 3, 5, 6), I(0, 0, 2, 1, 0, 0, 1, 3)], attrs={"mode": "reflect"})
case("Pad", "reflect-size-minus-one", [W(2, 4), I(0, 3, 1, 3)], attrs={"mode": "reflect"}, opset=13)
case("Pad", "reflect-negative", [W(2, 6, 5), I(0, -1, 2, 0, 2, -1)], attrs={"mode": "reflect"})
case("Pad", "reflect-1d", [W(4), I(3, 2)], attrs={"mode": "reflect"}, opset=11)
case("Pad", "reflect-5d", [W(1, 2, 3, 4, 3), I(0, 0, 1, 2, 1, 0, 1, 2, 3, 2)], attrs={"mode": "reflect"}, opset=13)
case("Pad", "reflect-pad2-attrs-opset7", [W(3, 4)], attrs={"mode": "reflect", "pads": [1, 2, 2, 1]}, opset=7)
case("Pad", "reflect-opset9-attrs-negative", [W(2, 3, 5)], attrs={"mode": "reflect", "pads": [0, 1, -1, 0, -1, 3]}, opset=9)
case("Pad", "reflect-opset18-axes", [W(2, 3, 5), I(2, 1, 1, 2), ABSENT, I(-1, 1)], attrs={"mode": "reflect"}, opset=18)
case("Pad", "reflect-dynamic", [W(2, 3, 5, 4), I(0, 0, 2, 1, 0, 0, 1, 3)], attrs={"mode": "reflect"}, dynamic=True)
case("Pad", "reflect-dynamic-negative-opset9", [W(2, 6, 4)], attrs={"mode": "reflect", "pads": [0, -2, 2, 0, 3, -1]},
     opset=9, dynamic=True)
case("Pad", "edge-nchw", [W(2, 3, 4, 5), I(0, 0, 2, 1, 0, 0, 1, 3)], attrs={"mode": "edge"})
case("Pad", "edge-beyond-size", [W(2, 3), I(0, 5, 3, 4)], attrs={"mode": "edge"}, opset=13)
case("Pad", "edge-size-one", [W(2, 1, 3), I(0, 2, 1, 0, 3, 0)], attrs={"mode": "edge"})
case("Pad", "edge-negative", [W(3, 5, 4), I(-1, 2, 0, 2, -2, -1)], attrs={"mode": "edge"})
case("Pad", "edge-pad2-attrs-opset7", [W(2, 3)], attrs={"mode": "edge", "pads": [1, 0, 2, 4]}, opset=7)
case("Pad", "edge-opset18-axes", [W(2, 3, 4), I(1, 3, 2, 0), ABSENT, I(0, 2)], attrs={"mode": "edge"}, opset=18)
case("Pad", "edge-dynamic", [W(2, 3, 4, 5), I(0, 0, 3, 1, 0, 0, 1, 6)], attrs={"mode": "edge"}, dynamic=True)
case("Pad", "edge-dynamic-size-one-negative", [W(2, 1, 4), I(0, 2, -1, 0, 1, 2)], attrs={"mode": "edge"}, opset=13,
     dynamic=True)
case("Pad", "wrap-nchw", [W(2, 3, 4, 5), I(0, 0, 1, 2, 0, 0, 2, 1)], attrs={"mode": "wrap"}, opset=19)
case("Pad", "wrap-size", [W(3, 4), I(3, 0, 0, 4)], attrs={"mode": "wrap"}, opset=19)
case("Pad", "wrap-beyond-size", [W(2, 3), I(0, 7, 0, 5)], attrs={"mode": "wrap"}, opset=19)
case("Pad", "wrap-negative", [W(5, 4), I(2, -1, -1, 3)], attrs={"mode": "wrap"}, opset=19)
case("Pad", "wrap-opset19-axes", [W(2, 3, 4), I(2, 5, 1, 0), ABSENT, I(-1, 1)], attrs={"mode": "wrap"}, opset=19)
case("Pad", "wrap-opset21-1d", [W(3), I(4, 2)], attrs={"mode": "wrap"}, opset=21)
# (end of the Pad-modes section)

# Issue 12, pooling at every opset, function bodies and float16 ---------------------------------------
# MaxPool with overlapping windows at every opset that has Indices (the one-hot ConvTranspose backward).
_P3 = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}  # resnet's stem pool
case("MaxPool", "opset8-overlap", [W(1, 2, 7, 7, sample=distinct)], attrs=_P3, opset=8)
case("MaxPool", "opset9-overlap", [W(2, 2, 7, 6, sample=distinct)], attrs=_P3, opset=9)
case("MaxPool", "opset9-1d-overlap", [W(2, 3, 9, sample=distinct)], attrs={"kernel_shape": [3], "strides": [2]}, opset=9)
case("MaxPool", "opset9-3d-overlap", [W(1, 2, 5, 5, 5, sample=distinct)],
     attrs={"kernel_shape": [3, 3, 3], "strides": [2, 2, 2], "pads": [1] * 6}, opset=9)
case("MaxPool", "opset9-indices-output-overlap", [W(2, 2, 6, 6, sample=distinct)], attrs=_P3, n_out=2, opset=9)
case("MaxPool", "opset10-ceil-overlap", [W(1, 2, 6, 6, sample=distinct)],
     attrs={"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, opset=10)
# ceil_mode whose last window would start in the end padding: onnxruntime drops it, ONNX shape inference does not.
_DROP = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 2, 2], "ceil_mode": 1}
case("MaxPool", "opset10-ceil-drop-overlap", [W(1, 2, 5, 5, sample=distinct)], attrs=_DROP, opset=10)
case("MaxPool", "opset11-dilated-overlap", [W(1, 2, 8, 7, sample=distinct)],
     attrs={"kernel_shape": [3, 2], "strides": [2, 1], "dilations": [2, 2], "pads": [1, 0, 2, 1]}, opset=11)
case("MaxPool", "opset11-dynamic-overlap", [W(1, 2, 7, 7, sample=distinct)], attrs=_P3, opset=11, dynamic=True)
case("MaxPool", "opset13-same-upper-overlap", [W(1, 2, 6, 7, sample=distinct)],
     attrs={"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}, opset=13)
case("MaxPool", "opset13-ceil-drop-overlap", [W(2, 1, 5, 5, sample=distinct)], attrs=_DROP, opset=13)
case("MaxPool", "opset13-same-lower-dilated-overlap", [W(1, 2, 6, 5, sample=distinct)],
     attrs={"kernel_shape": [2, 3], "strides": [2, 2], "dilations": [1, 2], "auto_pad": "SAME_LOWER"}, opset=13)
case("MaxPool", "opset15-overlap", [W(2, 3, 8, 8, sample=distinct)], attrs=_P3, opset=15)
case("MaxPool", "opset15-ceil-dynamic-overlap", [W(1, 2, 6, 6, sample=distinct)],
     attrs={"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, opset=15, dynamic=True)
case("MaxPool", "opset16-3d-overlap", [W(1, 2, 4, 6, 5, sample=distinct)],
     attrs={"kernel_shape": [2, 3, 3], "strides": [1, 2, 2], "pads": [0, 1, 1, 1, 1, 0]}, opset=16)
case("MaxPool", "opset16-indices-output-overlap", [W(1, 3, 6, 6, sample=distinct)], attrs=_P3, n_out=2, opset=16)
case("MaxPool", "opset18-1d-dilated-dynamic", [W(2, 2, 11, sample=distinct)],
     attrs={"kernel_shape": [3], "strides": [2], "dilations": [2], "pads": [2, 1]}, opset=18, dynamic=True)
case("MaxPool", "opset18-ceil-drop-dynamic", [W(1, 2, 5, 5, sample=distinct)], attrs=_DROP, opset=18, dynamic=True)
case("MaxPool", "opset18-storage-order", [W(1, 2, 5, 6, sample=distinct)], attrs={**_P3, "storage_order": 1}, opset=18)
# Ops with no rule of their own, differentiated through their ONNX function body (onnxsal.prepare.functions;
# more cases, with the expansion forced, in tests/test_functions.py).
case("RMSNormalization", "function-body-last-axis", [W(2, 3, 4), C(rand(4))], attrs={"epsilon": 1e-3}, opset=23)
case("RMSNormalization", "function-body-dynamic", [W(2, 3, 4), C(rand(3, 4))], attrs={"axis": 1}, opset=23, dynamic=True)
case("CenterCropPad", "function-body", [W(2, 5, 4), I(3, 6)], attrs={"axes": [1, 2]}, opset=18)
# (end of the pooling/function-body section)

# Issue 12, recurrent cells and control flow (LSTM, GRU, RNN, Loop, Scan, If) -----------------------
_RNN_R = np.random.default_rng(1206)  # this section's constants
_GATE_COUNT = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _recurrent(op: str, steps: int = 3, batch: int = 2, size: int = 2, hidden: int = 3, dirs: int = 1, layout: int = 0,
               bias: bool = True, states: str = "hc", weights: str = "const", peepholes: bool = False,
               lens: bool = False, state_sample: Sampler = normal) -> list[In]:
    """Inputs of an LSTM/GRU/RNN case: X differentiated; W, R (B, P) constants, or differentiated with
    weights="wrt"; the initial states in `states` ("h", "c") differentiated graph inputs, the others absent."""
    g = _GATE_COUNT[op]

    def weight(*shape):
        return W(*shape) if weights == "wrt" else C(0.6 * _RNN_R.standard_normal(shape))

    x = W(batch, steps, size) if layout else W(steps, batch, size)
    state = (batch, dirs, hidden) if layout else (dirs, batch, hidden)
    ins = [x, weight(dirs, g * hidden, size), weight(dirs, g * hidden, hidden),
           weight(dirs, 2 * g * hidden) if bias else ABSENT,
           C(np.full(batch, steps, np.int32)) if lens else ABSENT,
           W(*state, sample=state_sample) if "h" in states else ABSENT]
    if op == "LSTM":
        ins += [W(*state, sample=state_sample) if "c" in states else ABSENT, weight(dirs, 3 * hidden) if peepholes else ABSENT]
    while ins[-1] is ABSENT:
        ins.pop()
    return ins


_BI = {"direction": "bidirectional"}
_LSTM_OUT = {"n_out": 3}
_BOTH_STATES = [("Mul", ["y1", "y2"], {})]  # Y_h * Y_c: both final states explained at once
for op in ("RNN", "GRU", "LSTM"):
    n_out = {"n_out": 3} if op == "LSTM" else {"n_out": 2}
    case(op, "forward-Y", _recurrent(op, states=""), attrs={"hidden_size": 3}, **n_out)
    case(op, "forward-Y-single-output", _recurrent(op), attrs={"hidden_size": 3})
    case(op, "reverse-Yh", _recurrent(op), attrs={"hidden_size": 3, "direction": "reverse"}, explain=1, **n_out)
    case(op, "bidirectional-Y", _recurrent(op, dirs=2), attrs={"hidden_size": 3, **_BI}, **n_out)
    case(op, "bidirectional-Yh", _recurrent(op, dirs=2, bias=False), attrs={"hidden_size": 3, **_BI}, explain=1, **n_out)
    case(op, "layout1-bidirectional-Y", _recurrent(op, dirs=2, layout=1), attrs={"hidden_size": 3, "layout": 1, **_BI},
         opset=14, **n_out)
    case(op, "layout1-Yh", _recurrent(op, layout=1, states=""), attrs={"hidden_size": 3, "layout": 1}, explain=1,
         opset=14, **n_out)
    case(op, "weights-as-inputs", _recurrent(op, weights="wrt"), attrs={"hidden_size": 3}, **n_out)
    case(op, "sequence-lens-full", _recurrent(op, lens=True), attrs={"hidden_size": 3}, **n_out)
    case(op, "clip", _recurrent(op, dirs=2), attrs={"hidden_size": 3, "clip": 0.8, **_BI}, **n_out)
    case(op, "one-step-opset7", _recurrent(op, steps=1), attrs={"hidden_size": 3}, opset=7, **n_out)
    case(op, "no-hidden-size-attr", _recurrent(op, steps=2, hidden=4), explain=1, **n_out)
case("RNN", "relu-and-tanh", _recurrent("RNN", dirs=2, states=""),
     attrs={"hidden_size": 3, "activations": ["Relu", "Tanh"], **_BI}, n_out=2)
case("RNN", "affine-leaky-alphas", _recurrent("RNN", dirs=2),
     attrs={"hidden_size": 3, "activations": ["LeakyRelu", "Affine"], "activation_alpha": [0.2, 0.7],
            "activation_beta": [0.3], **_BI}, n_out=2)
case("RNN", "thresholded-relu", _recurrent("RNN"), attrs={"hidden_size": 3, "activations": ["ThresholdedRelu"],
                                                            "activation_alpha": [0.1]}, n_out=2)
case("GRU", "linear-before-reset", _recurrent("GRU"), attrs={"hidden_size": 3, "linear_before_reset": 1}, n_out=2)
case("GRU", "linear-before-reset-no-bias-reverse", _recurrent("GRU", bias=False),
     attrs={"hidden_size": 3, "linear_before_reset": 1, "direction": "reverse"}, explain=1, n_out=2)
case("GRU", "linear-before-reset-layout1-bidirectional", _recurrent("GRU", dirs=2, layout=1, weights="wrt"),
     attrs={"hidden_size": 3, "linear_before_reset": 1, "layout": 1, **_BI}, opset=14, n_out=2)
case("GRU", "activations-softsign-softplus", _recurrent("GRU"),
     attrs={"hidden_size": 3, "activations": ["Softsign", "Softplus"]}, n_out=2)
case("GRU", "activations-hardsigmoid-elu-bidirectional", _recurrent("GRU", dirs=2),
     attrs={"hidden_size": 3, "activations": ["HardSigmoid", "Elu", "Sigmoid", "ScaledTanh"],
            "activation_alpha": [0.3, 0.8, 0.9], "activation_beta": [0.45, 1.1], **_BI}, n_out=2)
case("LSTM", "final-states-h-and-c", _recurrent("LSTM"), attrs={"hidden_size": 3}, n_out=3, tail=_BOTH_STATES)
case("LSTM", "Yc-reverse", _recurrent("LSTM", states="c"), attrs={"hidden_size": 3, "direction": "reverse"},
     n_out=3, explain=2)
case("LSTM", "layout1-bidirectional-states", _recurrent("LSTM", dirs=2, layout=1), attrs={"hidden_size": 3, "layout": 1, **_BI},
     opset=14, n_out=3, tail=_BOTH_STATES)
case("LSTM", "peepholes", _recurrent("LSTM", peepholes=True), attrs={"hidden_size": 3}, n_out=3, tail=_BOTH_STATES)
case("LSTM", "peepholes-bidirectional-no-states", _recurrent("LSTM", dirs=2, peepholes=True, states=""),
     attrs={"hidden_size": 3, **_BI}, n_out=3)
case("LSTM", "peepholes-as-inputs", _recurrent("LSTM", peepholes=True, weights="wrt"), attrs={"hidden_size": 3},
     n_out=3, explain=2)
case("LSTM", "input-forget", _recurrent("LSTM", peepholes=True), attrs={"hidden_size": 3, "input_forget": 1},
     n_out=3, tail=_BOTH_STATES)
case("LSTM", "clip-input-forget-layout1", _recurrent("LSTM", layout=1),
     attrs={"hidden_size": 3, "clip": 0.6, "input_forget": 1, "layout": 1}, opset=14, n_out=3, explain=2)
# a large initial cell state: C stays beyond the clip, which bounds the gates' inputs but not h(C)
case("LSTM", "clip-large-cell-state", _recurrent("LSTM", steps=2, state_sample=uniform(-4.0, 4.0)),
     attrs={"hidden_size": 3, "clip": 0.5}, n_out=3, tail=_BOTH_STATES)
case("LSTM", "activations-alphas", _recurrent("LSTM"),
     attrs={"hidden_size": 3, "activations": ["HardSigmoid", "LeakyRelu", "Affine"], "activation_alpha": [0.3, 0.2, 0.8],
            "activation_beta": [0.4, 0.1]}, n_out=3, tail=_BOTH_STATES)
case("LSTM", "activations-bidirectional", _recurrent("LSTM", dirs=2),
     attrs={"hidden_size": 3, "activations": ["Sigmoid", "Tanh", "Tanh", "HardSigmoid", "ScaledTanh", "Elu"],
            "activation_alpha": [0.3, 0.6, 0.9], "activation_beta": [0.4, 1.2], **_BI}, n_out=3)
case("LSTM", "activations-softsign-softplus-relu", _recurrent("LSTM"),
     attrs={"hidden_size": 3, "activations": ["Sigmoid", "Softsign", "Softplus"]}, n_out=3, explain=1)

# Control flow. Subgraph values are left untyped (their type follows the run's dtype); "outer"
# inputs are graph inputs that only a subgraph reads, differentiated like W.
from onnx import helper as _helper  # noqa: E402


def O(*shape: int, sample: Sampler = normal) -> In:  # noqa: E743
    """A differentiated graph input read only from inside a subgraph (listed after the node's inputs)."""
    return In("outer", tuple(shape), sample)


def _graph(name: str, nodes: list, inputs: list, outputs: list[str]):
    """A subgraph; inputs are names (untyped) or (name, TensorProto type) for the int64/bool ones."""
    ins = [_helper.make_tensor_value_info(i[0], i[1], []) if isinstance(i, tuple) else _helper.ValueInfoProto(name=i)
           for i in inputs]
    return _helper.make_graph(nodes, name, ins, [_helper.ValueInfoProto(name=o) for o in outputs])


_n = _helper.make_node
_LOOP_HEAD = [("i", TensorProto.INT64), ("cond_in", TensorProto.BOOL)]
_TRUE = C(np.array(True))
# h <- tanh(h @ w + b + xs[i]); scan out h * xs[i]; w, b, xs read from the outer graph
_rnn_body = _graph("rnn_body", [
    _n("Gather", ["x5", "i"], ["x_t"], axis=0), _n("MatMul", ["h_in", "x3"], ["hw"]), _n("Add", ["hw", "x4"], ["hb"]),
    _n("Add", ["hb", "x_t"], ["pre"]), _n("Tanh", ["pre"], ["h_out"]), _n("Identity", ["cond_in"], ["cond_out"]),
    _n("Mul", ["h_out", "x_t"], ["s"]),
], _LOOP_HEAD + ["h_in"], ["cond_out", "h_out", "s"])
_rnn_loop = [C(np.array(3, np.int64)), _TRUE, W(2, 3), O(3, 3), O(3), O(3, 2, 3)]
case("Loop", "carried-state", _rnn_loop, attrs={"body": _rnn_body}, n_out=2)
case("Loop", "scan-output", _rnn_loop, attrs={"body": _rnn_body}, n_out=2, explain=1)
case("Loop", "state-and-scan", _rnn_loop, attrs={"body": _rnn_body}, n_out=2, tail=[("Add", ["y1", "y0"], {})])
case("Loop", "dynamic", _rnn_loop, attrs={"body": _rnn_body}, n_out=2, dynamic=True, tail=[("Add", ["y1", "y0"], {})])
case("Loop", "opset11", _rnn_loop, attrs={"body": _rnn_body}, n_out=2, opset=11, tail=[("Add", ["y1", "y0"], {})])
# no condition input, the body's condition a Constant true; a second carried value passed on unchanged
_const_cond_body = _graph("const_cond_body", [
    _n("Constant", [], ["yes"], value=_helper.make_tensor("yes", TensorProto.BOOL, [], [True])),
    _n("Sin", ["a_in"], ["sa"]), _n("Mul", ["sa", "b_in"], ["a_out"]), _n("Identity", ["b_in"], ["b_out"]),
], _LOOP_HEAD + ["a_in", "b_in"], ["yes", "a_out", "b_out"])
case("Loop", "no-cond-constant-true-passthrough", [C(np.array(4, np.int64)), ABSENT, W(2, 3), W(2, 3)],
     attrs={"body": _const_cond_body}, n_out=2, tail=[("Mul", ["y0", "y1"], {})])
case("Loop", "zero-trips", [C(np.array(0, np.int64)), ABSENT, W(2, 3), W(2, 3)], attrs={"body": _const_cond_body},
     n_out=2, tail=[("Mul", ["y0", "y1"], {})])
# an If inside the body, on a condition computed from the loop-carried value, reading body values
_then = _graph("then", [_n("Sin", ["h_in"], ["st"]), _n("Mul", ["st", "x3"], ["t_out"])], [], ["t_out"])
_else = _graph("else", [_n("Tanh", ["h_in"], ["te"]), _n("Neg", ["te"], ["e_out"])], [], ["e_out"])
_if_body = _graph("if_body", [
    _n("ReduceSum", ["h_in"], ["total"], keepdims=0), _n("ReduceSum", ["x3"], ["bar"], keepdims=0),
    _n("Greater", ["total", "bar"], ["pick"]), _n("If", ["pick"], ["h_out"], then_branch=_then, else_branch=_else),
    _n("Identity", ["cond_in"], ["cond_out"]),
], _LOOP_HEAD + ["h_in"], ["cond_out", "h_out"])
case("Loop", "nested-if-on-carried-value", [C(np.array(3, np.int64)), _TRUE, W(2, 3), O(2, 3)], attrs={"body": _if_body})
# an LSTM inside the body (lowered on the next round), its weights read from the outer graph
_lstm_body = _graph("lstm_body", [
    _n("LSTM", ["h_in", "x3", "x4"], ["seq"], hidden_size=3),
    _n("Squeeze", ["seq", "dir_axis"], ["seq3"]), _n("Add", ["seq3", "h_in"], ["h_out"]),
    _n("Identity", ["cond_in"], ["cond_out"]),
], _LOOP_HEAD + ["h_in"], ["cond_out", "h_out"])
_lstm_body.initializer.append(_helper.make_tensor("dir_axis", TensorProto.INT64, [1], [1]))
case("Loop", "body-holds-an-lstm", [C(np.array(2, np.int64)), _TRUE, W(2, 2, 3), O(1, 12, 3), O(1, 12, 3)],
     attrs={"body": _lstm_body})

# Scan: h <- tanh(h * u + x_t), scan out h * x_t
_scan_body = _graph("scan_body", [
    _n("Mul", ["h_in", "x2"], ["hu"]), _n("Add", ["hu", "x_t"], ["pre"]), _n("Tanh", ["pre"], ["h_out"]),
    _n("Mul", ["h_out", "x_t"], ["s"]),
], ["h_in", "x_t"], ["h_out", "s"])
case("Scan", "axis0-state", [W(2, 3), W(4, 2, 3), O(2, 3)], attrs={"body": _scan_body, "num_scan_inputs": 1}, n_out=2)
case("Scan", "axis0-scan-output", [W(2, 3), W(4, 2, 3), O(2, 3)], attrs={"body": _scan_body, "num_scan_inputs": 1},
     n_out=2, explain=1)
case("Scan", "input-axis1-reverse-output-axis2", [W(2, 3), W(2, 4, 3), O(2, 3)],
     attrs={"body": _scan_body, "num_scan_inputs": 1, "scan_input_axes": [1], "scan_input_directions": [1],
            "scan_output_axes": [2]}, n_out=2, tail=[("ReduceSum", ["y1"], {"keepdims": 0}), ("Add", ["t0", "y0"], {})])
case("Scan", "negative-axes-reverse-output", [W(2, 3), W(2, 3, 5), O(2, 3)],
     attrs={"body": _scan_body, "num_scan_inputs": 1, "scan_input_axes": [-1], "scan_output_axes": [-1],
            "scan_output_directions": [1]}, n_out=2, explain=1)
_two_body = _graph("two_body", [_n("Mul", ["a_t", "b_t"], ["ab"]), _n("Add", ["acc_in", "ab"], ["acc_out"]),
                                _n("Sin", ["ab"], ["s"])], ["acc_in", "a_t", "b_t"], ["acc_out", "s"])
case("Scan", "two-inputs-opset9", [W(3), W(4, 3), W(3, 4)],
     attrs={"body": _two_body, "num_scan_inputs": 2, "scan_input_axes": [0, 1], "scan_input_directions": [0, 1]},
     n_out=2, opset=9, tail=[("Add", ["y1", "y0"], {})])

# If: both branches read outer values; a condition fed at run time (true, false), or constant
_if_then = _graph("then", [_n("Mul", ["x1", "x2"], ["m"]), _n("Sin", ["x1"], ["s1"])], [], ["m", "s1"])
_if_else = _graph("else", [_n("Tanh", ["x2"], ["t"]), _n("Add", ["t", "x1"], ["a"]), _n("Exp", ["x2"], ["e"])],
                  [], ["a", "e"])
_IF = {"then_branch": _if_then, "else_branch": _if_else}
_BOOL = TensorProto.BOOL
case("If", "run-time-true", [F(sample=fixed(1.0), dtype=_BOOL), O(2, 3), O(2, 3)], attrs=_IF, n_out=2,
     tail=[("Mul", ["y0", "y1"], {})])
case("If", "run-time-false", [F(sample=fixed(0.0), dtype=_BOOL), O(2, 3), O(2, 3)], attrs=_IF, n_out=2,
     tail=[("Mul", ["y0", "y1"], {})])
case("If", "run-time-cond-shape-1", [F(1, sample=fixed(0.0), dtype=_BOOL), O(2, 3), O(2, 3)], attrs=_IF, n_out=2)
# with symbolic dims: the branches agree on them when computed from the same input
_IF_ONE = {"then_branch": _graph("then", [_n("Sin", ["x1"], ["s"]), _n("Exp", ["x1"], ["e"])], [], ["s", "e"]),
           "else_branch": _graph("else", [_n("Tanh", ["x1"], ["t"]), _n("Mul", ["t", "x1"], ["m"])], [], ["m", "t"])}
for _c in (0.0, 1.0):
    case("If", f"run-time-dynamic-{int(_c)}", [F(sample=fixed(_c), dtype=_BOOL), O(2, 3)], attrs=_IF_ONE, n_out=2,
         dynamic=True, tail=[("Mul", ["y0", "y1"], {})])
case("If", "constant-cond", [C(np.array([False])), O(2, 3), O(2, 3)], attrs=_IF, n_out=2)
case("If", "opset11-second-output", [F(sample=fixed(1.0), dtype=_BOOL), O(2, 3), O(2, 3)], attrs=_IF, n_out=2,
     explain=1, opset=11)
# (end of the recurrent/control-flow section)

# Issue 12, broadcasting back below opset 8 (Tile instead of Expand: paddle2onnx writes opset 7) ----------
case("ReduceMean", "opset7-keep", [W(2, 3, 4)], attrs={"axes": [1]}, opset=7)
case("ReduceMean", "opset7-nokeep-dynamic", [W(2, 3, 4)], attrs={"axes": [2], "keepdims": 0}, opset=7, dynamic=True)
case("ReduceSum", "opset7-all", [W(2, 3, 4)], attrs={"keepdims": 0}, opset=7)
case("ReduceLogSum", "opset7-axis", [W(2, 3, 4, sample=positive())], attrs={"axes": [1]}, opset=7)
case("GlobalAveragePool", "opset7-dynamic", [W(2, 3, 4, 5)], opset=7, dynamic=True)
