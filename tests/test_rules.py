"""Numerical checks of every gradient rule, and exact checks of the attribution variants.

Each case of tests/rule_cases.py becomes a one-node model (plus optional tail nodes). In float64,
through onnx.reference.ReferenceEvaluator, the dot-product test holds the rule to the truth:
<J u, v> by central differences of the forward model equals <u, J^T v> from the gradient graph
fed with the seed v. The same case built in float32 then runs through onnxruntime (CPU): its
forward output must match the reference's (both runtimes give the op the same meaning) and its
gradient the float64 one (onnxruntime's CPU provider lacks float64 Conv, ConvTranspose and
GlobalAveragePool, hence the reference evaluator for float64). Where onnx.reference itself is
wrong or incomplete, a spec-faithful replacement is passed to it (see FAITHFUL_OPS).

The variant tests at the end check guided backprop, deconvnet and softmax-as-identity on tiny
graphs against exact values, with the kink conventions of DESIGN.md.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun
from onnx.reference.ops._op import OpRunUnaryNum
from onnx.reference.ops.op_max_pool import MaxPool as _RefMaxPool
from onnx.reference.ops.op_resize import Resize as _RefResize
from onnx.reference.ops.op_scatter_elements import scatter_elements

from onnxsal.autodiff import DEFAULT_RULES, SeedSpec, differentiate, rule_set
from onnxsal.errors import UnsupportedModelError
from onnxsal.prepare import LOWERINGS, lower
from recurrent_reference import RECURRENT_OPS
from rule_cases import CASES, C, Case, In, W

# -- onnx.reference, made faithful where it is not --------------------------------------------------
# The float64 checks run through onnx.reference.ReferenceEvaluator, whose implementations of a few
# ops are wrong or missing in onnx 1.23 for what the table exercises. Each replacement below follows
# the ONNX specification, and every case's forward output is also compared with onnxruntime's.
class Erf(OpRunUnaryNum):
    """The reference evaluates math.erf into float32 (np.vectorize(..., otypes="f")), which spoils
    float64 central differences: same function, float64 result."""

    op_domain = ""

    def _run(self, x):
        return (np.vectorize(math.erf, otypes=[np.float64])(x).astype(x.dtype),)


class Gelu(OpRun):
    """The reference runs Gelu's function body, whose Erf is the float32 one above: the spec's formula
    in the input's dtype instead (approximate "none": x Phi(x); "tanh": its tanh approximation)."""

    op_domain = ""

    def _run(self, x, approximate=None):
        approximate = approximate.decode() if isinstance(approximate, bytes) else (approximate or "none")
        if approximate == "tanh":
            y = 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
        else:
            y = 0.5 * x * (1.0 + np.vectorize(math.erf, otypes=[np.float64])(x / math.sqrt(2.0)))
        return (np.asarray(y).astype(x.dtype),)


class Mean(OpRun):
    """The reference adds in place into a copy of the first input, so it breaks when that input is
    the one broadcast (a smaller shape): the broadcasting mean."""

    op_domain = ""

    def _run(self, *args):
        return ((sum(args[1:], args[0]) / len(args)).astype(args[0].dtype),)


class GlobalMaxPool(OpRun):
    """The reference reduces axes (rank-2, rank-1): right for 2-D images only."""

    op_domain = ""

    def _run(self, x):
        return (x.max(axis=tuple(range(2, x.ndim)), keepdims=True),)


class MaxPool(_RefMaxPool):
    """The reference's unit-stride path returns Indices without the n*C+c offsets the spec
    (and onnxruntime) put in: flat positions in [0, N*C*D1*...*Dn). Add them where missing."""

    op_domain = ""

    def _run(self, x, **attrs):
        res = super()._run(x, **attrs)
        if len(res) == 2:
            nc, size = x.shape[0] * x.shape[1], int(np.prod(x.shape[2:]))
            idx = res[1]
            if nc > 1 and np.all(idx < size):  # channel c > 0 would have indices >= c * size
                idx = idx + (np.arange(nc) * size).reshape(x.shape[:2] + (1,) * (x.ndim - 2))
            res = (res[0], idx)
        return res


class BatchNormalization(OpRun):
    """Inference form only. The reference's opset 9 version uses the batch statistics whenever
    `momentum` is set, and the schema gives it a default, so it never normalises with mean/var."""

    op_domain = ""

    def _run(self, x, scale, bias, mean, var, epsilon=None, training_mode=None, is_test=None, **_):
        if training_mode or len(self.output) > 1:
            raise NotImplementedError("training-mode BatchNormalization")
        shape = (-1,) + (1,) * (x.ndim - 2)
        eps = 1e-5 if epsilon is None else epsilon
        y = scale.reshape(shape) * (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) + bias.reshape(shape)
        return (y.astype(x.dtype),)


def _opset(op: OpRun) -> int:
    opsets = op.run_params["opsets"]
    return opsets.get("", opsets.get("ai.onnx"))


def _given(op: OpRun, name: str, value):
    """The attribute as the node states it, None when absent (the evaluator fills in the newest default)."""
    return value if any(a.name == name for a in op.onnx_node.attribute) else None


class Softmax(OpRun):
    """The reference ignores the opset < 13 meaning of `axis` (normalise the flattened axes axis..)."""

    op_domain = ""

    def _run(self, x, axis=None):
        return (_softmax(x, _given(self, "axis", axis), _opset(self)),)


class LogSoftmax(OpRun):
    op_domain = ""

    def _run(self, x, axis=None):
        return (np.log(_softmax(x, _given(self, "axis", axis), _opset(self))),)


def _softmax(x: np.ndarray, axis, opset: int) -> np.ndarray:
    if opset >= 13:
        axes = ((-1 if axis is None else axis) % x.ndim,)
    else:
        axes = tuple(range((1 if axis is None else axis) % x.ndim, x.ndim))
    e = np.exp(x - x.max(axis=axes, keepdims=True))
    return e / e.sum(axis=axes, keepdims=True)


class Pad(OpRun):
    """Every mode with negative pads (crops), which the reference (numpy.pad) refuses: x is cropped
    by the negative pads first, then padded by the positive ones in the mode (onnxruntime's order,
    which matters for wrap); reflect pads beyond the cropped size minus one are invalid."""

    op_domain = ""

    def _run(self, data, pads=None, constant_value=None, axes=None, mode=None, value=None, paddings=None):
        mode = mode.decode() if isinstance(mode, bytes) else (mode or "constant")
        rank = data.ndim
        axes = list(range(rank)) if axes is None else [int(a) % rank for a in np.ravel(axes)]
        pads = [int(p) for p in np.ravel(pads if pads is not None else paddings)]
        begin, end = [0] * rank, [0] * rank
        for i, a in enumerate(axes):
            begin[a], end[a] = pads[i], pads[len(axes) + i]
        crop = tuple(slice(max(-b, 0), data.shape[k] - max(-e, 0)) for k, (b, e) in enumerate(zip(begin, end)))
        data = data[crop]
        width = [(max(b, 0), max(e, 0)) for b, e in zip(begin, end)]
        if mode == "reflect" and any(max(w) > n - 1 for w, n in zip(width, data.shape) if max(w)):
            raise ValueError(f"reflect pads {width} exceed the cropped shape {data.shape} minus one")
        if mode != "constant":
            return (np.pad(data, width, mode=mode),)
        fill = value or 0
        if constant_value is not None and np.size(constant_value):
            fill = np.ravel(constant_value)[0]
        return (np.pad(data, width, constant_values=fill),)


class ConvTranspose(OpRun):
    """The reference breaks on group > 1 and on output_shape without auto_pad. Straight from the
    spec: y[o] += x[i] W[k] at o = i*stride + k*dilation - pad_begin, per group."""

    op_domain = ""

    def _run(self, x, w, b=None, auto_pad=None, dilations=None, group=None, kernel_shape=None,
             output_padding=None, output_shape=None, pads=None, strides=None):
        n = x.ndim - 2
        group = group or 1
        kernel = w.shape[2:]
        strides = list(strides or [1] * n)
        dilations = list(dilations or [1] * n)
        extra = list(output_padding or [0] * n)
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else (auto_pad or "NOTSET")
        full = [strides[d] * (x.shape[2 + d] - 1) + extra[d] + (kernel[d] - 1) * dilations[d] + 1 for d in range(n)]
        if output_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out = list(output_shape)[-n:] if output_shape is not None else [x.shape[2 + d] * strides[d] for d in range(n)]
            total = [full[d] - out[d] for d in range(n)]
            begin = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in total]
        else:
            pads = list(pads or [0] * (2 * n))
            begin = pads[:n]
            out = [full[d] - pads[d] - pads[n + d] for d in range(n)]
        cg, mg = x.shape[1] // group, w.shape[1]
        y = np.zeros((x.shape[0], mg * group, *out), dtype=np.float64)
        for i in np.ndindex(*x.shape[2:]):
            for k in np.ndindex(*kernel):
                o = tuple(i[d] * strides[d] + k[d] * dilations[d] - begin[d] for d in range(n))
                if any(o[d] < 0 or o[d] >= out[d] for d in range(n)):
                    continue
                for gr in range(group):
                    xi = x[(slice(None), slice(gr * cg, (gr + 1) * cg)) + i]
                    wk = w[(slice(gr * cg, (gr + 1) * cg), slice(None)) + k]
                    y[(slice(None), slice(gr * mg, (gr + 1) * mg)) + o] += xi @ wk
        if b is not None:
            y += b.reshape((1, -1) + (1,) * n)
        return (y.astype(x.dtype),)


class Upsample(OpRun):
    """Not implemented by the reference for mode 'linear'. Upsample samples at x_out / scale (the
    asymmetric transform, nearest rounded down), as onnxruntime does: Resize with those settings."""

    op_domain = ""

    def _run(self, x, scales=None, mode=None):
        mode = mode.decode() if isinstance(mode, bytes) else (mode or "nearest")
        scales = np.asarray(scales, dtype=np.float32)
        node = helper.make_node("Resize", ["x", "", "s"], ["y"], mode=mode,
                                coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        graph = helper.make_graph(
            [node], "upsample", [helper.make_tensor_value_info("x", helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)],
            [helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(x.dtype), None)],
            initializer=[numpy_helper.from_array(scales, "s")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        return (ReferenceEvaluator(model).run(None, {"x": x})[0],)


class Resize(_RefResize):
    """Resize-10 takes (X, scales) and samples like Upsample; the reference reads input 1 as roi."""

    op_domain = ""

    def _run(self, x, *inputs, **attrs):
        if _opset(self) < 11:
            return Upsample._run(self, x, inputs[0], attrs.get("mode"))
        return super()._run(x, *inputs, **attrs)


class Scatter(OpRun):
    """Missing from the reference: the opset 9-10 name of ScatterElements (same semantics, no reduction)."""

    op_domain = ""

    def _run(self, data, indices, updates, axis=None):
        return (scatter_elements(data, indices, updates, axis=axis or 0),)


FAITHFUL_OPS = [Erf, GlobalMaxPool, MaxPool, BatchNormalization, Softmax, LogSoftmax, Pad, ConvTranspose, Upsample, Resize, Scatter, Gelu, Mean]


class LRN(OpRun):
    """The reference loops its window over the batch axis where the spec runs it over the channels."""

    op_domain = ""

    def _run(self, x, alpha=None, beta=None, bias=None, size=None):
        alpha = 1e-4 if alpha is None else alpha
        beta = 0.75 if beta is None else beta
        bias = 1.0 if bias is None else bias
        before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
        channels = x.shape[1]
        square_sum = np.zeros_like(x)
        for c in range(channels):
            square_sum[:, c] = np.sum(x[:, max(0, c - before):min(channels, c + after + 1)] ** 2, axis=1)
        return ((x / (bias + alpha / size * square_sum) ** beta).astype(x.dtype),)


class LpNormalization(OpRun):
    """The reference sums x ** p, not |x| ** p: wrong for p = 1 wherever x < 0."""

    op_domain = ""

    def _run(self, x, axis=None, p=None):
        axis = -1 if axis is None else axis
        p = 2 if p is None else p
        norm = np.sum(np.abs(x) ** p, axis=axis, keepdims=True) ** (1.0 / p)
        return (np.where(norm == 0, 0, x / np.where(norm == 0, 1, norm)).astype(x.dtype),)


FAITHFUL_OPS += [LRN, LpNormalization]


class MeanVarianceNormalization(OpRun):
    """The reference runs the function body, whose float32 epsilon cannot be added to float64 data."""

    op_domain = ""

    def _run(self, x, axes=None):
        axes = tuple(a % x.ndim for a in (axes if axes is not None else [0, 2, 3]))
        centred = x - x.mean(axis=axes, keepdims=True)
        std = np.sqrt(np.mean(centred ** 2, axis=axes, keepdims=True))
        return ((centred / (std + 1e-9)).astype(x.dtype),)


class GroupNormalization(OpRun):
    """The reference follows stash_type (float32 statistics), which spoils float64 central
    differences: the same formula in the input's dtype. Scale and bias are per group in opset 18
    and per channel from opset 21."""

    op_domain = ""

    def _run(self, x, scale, bias, epsilon=None, num_groups=None, stash_type=None):
        eps = 1e-5 if epsilon is None else epsilon
        grouped = x.reshape(x.shape[0], num_groups, -1)
        centred = grouped - grouped.mean(axis=2, keepdims=True)
        xhat = centred / np.sqrt(np.mean(centred ** 2, axis=2, keepdims=True) + eps)
        if _opset(self) < 21:
            y = xhat * scale.reshape(1, -1, 1) + bias.reshape(1, -1, 1)
            return (y.reshape(x.shape).astype(x.dtype),)
        per_channel = (1, -1) + (1,) * (x.ndim - 2)
        y = xhat.reshape(x.shape) * scale.reshape(per_channel) + bias.reshape(per_channel)
        return (y.astype(x.dtype),)


FAITHFUL_OPS += [MeanVarianceNormalization, GroupNormalization]
FAITHFUL_OPS += RECURRENT_OPS  # LSTM/GRU/RNN with every attribute (tests/recurrent_reference.py)


class GatherElements(OpRun):
    """The reference slices the shapes wrongly for a negative axis (and np.choose takes at most 32
    choices): out[i] = data[i with i[axis] replaced by indices[i]], negative indices from the end."""

    op_domain = ""

    def _run(self, data, indices, axis=None):
        axis = (axis or 0) % data.ndim
        where = list(np.indices(indices.shape, sparse=True))
        where[axis] = np.where(indices < 0, indices + data.shape[axis], indices)
        return (data[tuple(where)],)


FAITHFUL_OPS += [GatherElements]


def reference(model: onnx.ModelProto) -> ReferenceEvaluator:
    return ReferenceEvaluator(model, new_ops=FAITHFUL_OPS)


DOT_RTOL = 1e-6  # float64 dot-product test, relative to sum |u * J^T v|
ORT_RTOL = 1e-4  # float32 onnxruntime gradient against the float64 reference gradient


# -- building and running the models ---------------------------------------------------------------
def _input_dtype(spec, dtype) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(spec.dtype)) if spec.dtype is not None else np.dtype(dtype)


def _explained(case: Case) -> str:
    return f"t{len(case.tail) - 1}" if case.tail else f"y{case.explain}"


def build(case: Case, dtype, out_info: tuple[np.dtype, tuple] | None = None, const_nodes: bool = False) -> onnx.ModelProto:
    """The case as a model in `dtype` (float tensors), its inputs named x0, x1, ...; constants are
    initializers, or Constant nodes (as paddle2onnx writes them) with `const_nodes`."""
    inputs, inits, names, consts = [], [], [], []
    for i, spec in enumerate(case.inputs):
        if spec.kind == "absent":
            names.append("")
            continue
        name = f"x{i}"
        if spec.kind != "outer":  # "outer": a graph input only a subgraph reads (If/Loop/Scan); listed last
            names.append(name)
        if spec.kind == "const":
            value = spec.value
            if value.dtype.kind == "f" and not spec.fixed:
                value = value.astype(dtype)
            if const_nodes:
                consts.append(helper.make_node("Constant", [], [name], name=f"const{i}", value=numpy_helper.from_array(value)))
            else:
                inits.append(numpy_helper.from_array(value, name))
        else:
            proto = helper.np_dtype_to_tensor_dtype(_input_dtype(spec, dtype))
            symbolic = case.dynamic and spec.dtype is None  # float data; int64/bool feeds keep their lengths
            shape = [f"{name}_d{k}" for k in range(len(spec.shape))] if symbolic else list(spec.shape)
            inputs.append(helper.make_tensor_value_info(name, proto, shape))
    outs = [f"y{k}" for k in range(case.n_out)]
    nodes = consts + [helper.make_node(case.op, names, outs, name=case.op.lower(), **case.attrs)]
    for k, (op, ins, attrs) in enumerate(case.tail):
        nodes.append(helper.make_node(op, ins, [f"t{k}"], name=f"tail{k}", **attrs))
    y = _explained(case)
    if out_info is None:
        output = onnx.ValueInfoProto(name=y)
    else:
        et = helper.np_dtype_to_tensor_dtype(out_info[0])
        output = helper.make_tensor_value_info(y, et, None if case.dynamic else list(out_info[1]))
    graph = helper.make_graph(nodes, case.id, inputs, [output], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)])
    model.ir_version = 10
    return model


def feeds_for(case: Case, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """float64 values of every graph input (wrt and fed), drawn by the case's samplers."""
    return {f"x{i}": np.asarray(s.sample(rng, s.shape), dtype=np.float64)
            for i, s in enumerate(case.inputs) if s.kind in ("wrt", "feed", "outer")}


def cast_feeds(case: Case, feeds: dict[str, np.ndarray], dtype) -> dict[str, np.ndarray]:
    return {k: v.astype(_input_dtype(case.inputs[int(k[1:])], dtype)) for k, v in feeds.items()}


def wrt_names(case: Case) -> list[str]:
    return [f"x{i}" for i, s in enumerate(case.inputs) if s.kind in ("wrt", "outer")]


def gradient_graph(model: onnx.ModelProto, wrt: list[str], output: str, rules: str = "gradient", softmax: str = "keep"):
    rs = rule_set(rules, softmax)
    return differentiate(lower(model, rs.supports, wrt, output), rs, wrt=wrt, output=output, seed=SeedSpec("tensor"))


def ort_run(model: onnx.ModelProto, outputs: list[str], feeds: dict) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(outputs, feeds)


def _rng(case: Case) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(case.id.encode()))


# -- the numerical check of every rule -------------------------------------------------------------
def test_every_registered_rule_has_a_case():
    covered = {c.op for c in CASES}
    missing = sorted(set(DEFAULT_RULES) - covered)
    assert not missing, f"registered gradient rules with no case in tests/rule_cases.py: {missing}"
    unlowered = sorted(set(LOWERINGS) - covered)
    assert not unlowered, f"registered lowerings with no case in tests/rule_cases.py: {unlowered}"


def test_case_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(CONSTANT_NODE_CASES) == 28  # every id named there exists


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rule(case: Case):
    check_case(case)


# Rules that read a constant input (weights, BN statistics, Clip bounds, axes, pads, indices, scales):
# the same check with those constants held in Constant nodes instead of initializers.
CONSTANT_NODE_CASES = [c for c in CASES if c.id in {
    "Conv-bias-kernel-shape", "ConvTranspose-bias", "BatchNormalization-nchw", "LayerNormalization-last-axis",
    "Clip-relu6", "Clip-max-only", "Pow-int-exponent", "Gemm-alpha-only-A", "PRelu-slope-const", "Where-only-y",
    "Reshape-plain", "Squeeze-opset13-axes", "Unsqueeze-opset13", "Split-sizes-one-unused", "Slice-step2",
    "Slice-starts-ends", "Pad-negative", "Pad-opset18-axes", "Gather-axis0-repeated", "Gather-distinct-indices",
    "Expand-channel", "Resize-linear-half-pixel", "Resize-tf-crop-and-resize", "Resize-nearest-sizes-round",
    "ReduceSum-opset13-axes-keepdims", "ReduceMean-opset18-input-axes", "ReduceMax-opset18-input-axes",
    "Dropout-ratio-inference",
}]


@pytest.mark.parametrize("case", CONSTANT_NODE_CASES, ids=[c.id for c in CONSTANT_NODE_CASES])
def test_rule_with_constant_nodes(case: Case):
    check_case(case, const_nodes=True)


def check_case(case: Case, const_nodes: bool = False) -> None:
    """The float64 dot-product test through the reference, then the float32 run in onnxruntime."""
    rng = _rng(case)
    y = _explained(case)
    wrt = wrt_names(case)
    x64 = cast_feeds(case, feeds_for(case, rng), np.float64)

    # float64: <J u, v> by central differences against <u, J^T v> from the gradient graph.
    probe = reference(build(case, np.float64, const_nodes=const_nodes))
    y0 = np.asarray(probe.run([y], x64)[0])
    fwd64 = build(case, np.float64, (y0.dtype, y0.shape), const_nodes)
    f = reference(fwd64)
    u = {w: case.u_sample(rng, x64[w].shape).astype(x64[w].dtype) for w in wrt}
    v = rng.standard_normal(y0.shape).astype(y0.dtype)
    plus = {k: (a + case.eps * u[k] if k in u else a) for k, a in x64.items()}
    minus = {k: (a - case.eps * u[k] if k in u else a) for k, a in x64.items()}
    ju = (np.asarray(f.run([y], plus)[0], np.float64) - np.asarray(f.run([y], minus)[0], np.float64)) / (2 * case.eps)

    gg64 = gradient_graph(fwd64, wrt, y)
    names = [gg64.grads[w] for w in wrt]
    g64 = reference(gg64.model).run(names, {**x64, gg64.seed_input: v})
    for w, g in zip(wrt, g64):
        assert g.shape == x64[w].shape, f"gradient of {w} has shape {g.shape}, expected {x64[w].shape}"
        assert g.dtype == x64[w].dtype, f"gradient of {w} has dtype {g.dtype}, expected {x64[w].dtype}"
    lhs = float(np.sum(ju * v))
    rhs = float(sum(np.sum(u[w].astype(np.float64) * g.astype(np.float64)) for w, g in zip(wrt, g64)))
    scale = max(sum(float(np.sum(np.abs(u[w] * g))) for w, g in zip(wrt, g64)), float(np.sum(np.abs(ju * v))), 1e-12)
    assert abs(lhs - rhs) <= DOT_RTOL * scale, (
        f"dot-product test failed: <Ju,v> = {lhs!r} (central differences), <u,J^T v> = {rhs!r} (gradient graph)"
    )

    # float32 through onnxruntime: the forward agrees with the reference (so both runtimes give the
    # op the same meaning), and the gradient with the float64 reference gradient.
    x32 = cast_feeds(case, x64, np.float32)
    out32 = np.float32 if y0.dtype == np.float64 and not _output_pinned(case) else y0.dtype
    fwd32 = build(case, np.float32, (np.dtype(out32), y0.shape), const_nodes)
    gg32 = gradient_graph(fwd32, wrt, y)
    y32, *g32 = ort_run(gg32.model, [y] + [gg32.grads[w] for w in wrt], {**x32, gg32.seed_input: v.astype(out32)})
    np.testing.assert_allclose(y32, y0, rtol=ORT_RTOL, atol=ORT_RTOL * max(float(np.max(np.abs(y0), initial=0.0)), 1e-3),
                               err_msg="onnxruntime and the reference disagree on the forward op")
    for w, a, b in zip(wrt, g32, g64):
        assert a.dtype == x32[w].dtype
        np.testing.assert_allclose(a, b, rtol=ORT_RTOL, atol=ORT_RTOL * max(float(np.max(np.abs(b), initial=0.0)), 1e-3),
                                   err_msg=f"onnxruntime float32 gradient of {w} differs from the float64 reference")


def _output_pinned(case: Case) -> bool:
    """Whether the output's dtype is fixed by the case (Cast's `to`) rather than following the run."""
    return case.op == "Cast"


# -- limitations are said clearly -----------------------------------------------------------------
def test_maxpool_without_indices_is_a_clear_error():
    case = Case("MaxPool", "opset7", [W(1, 1, 5, 5)], attrs={"kernel_shape": [3, 3], "strides": [1, 1]}, opset=7)
    model = build(case, np.float32, (np.dtype(np.float32), (1, 1, 3, 3)))
    with pytest.raises(UnsupportedModelError, match="opset 8 or newer"):
        gradient_graph(model, ["x0"], "y0")


def test_ops_the_opset_lacks_are_a_clear_error():
    # LeakyRelu's gradient needs Where (opset 9); an opset 6 model cannot hold it.
    case = Case("LeakyRelu", "opset6", [W(2, 3)], opset=6)
    model = build(case, np.float32, (np.dtype(np.float32), (2, 3)))
    with pytest.raises(UnsupportedModelError, match="opset 6"):
        gradient_graph(model, ["x0"], "y0")


def test_resize_keeping_aspect_ratio_is_a_clear_error():
    case = Case("Resize", "keep-aspect", [W(1, 1, 4, 6), In("absent"), In("absent"), C(np.array([3, 3], np.int64))],
                attrs={"mode": "linear", "axes": [2, 3], "keep_aspect_ratio_policy": "not_larger"}, opset=18)
    model = build(case, np.float32, (np.dtype(np.float32), (1, 1, 2, 3)))
    with pytest.raises(UnsupportedModelError, match="keep_aspect_ratio_policy"):
        gradient_graph(model, ["x0"], "y0")


def test_training_mode_dropout_is_refused():
    case = Case("Dropout", "training", [W(2, 3), C(0.5), C(np.array(True))], n_out=1, opset=13)
    model = build(case, np.float32, (np.dtype(np.float32), (2, 3)))
    with pytest.raises(UnsupportedModelError, match="training"):
        gradient_graph(model, ["x0"], "y0")


# -- variants: exact values on tiny graphs ----------------------------------------------------------
def _tiny(op: str, x_shape, inputs_extra=(), attrs=None, opset=13, tail=None, out_shape=None):
    """x -> op(x, *constants) [-> tail ops]; float32."""
    inits, names = [], ["x"]
    for k, value in enumerate(inputs_extra):
        if value is None:
            names.append("")
            continue
        names.append(f"c{k}")
        inits.append(numpy_helper.from_array(np.asarray(value), f"c{k}"))
    nodes = [helper.make_node(op, names, ["y"], name="main", **(attrs or {}))]
    out = "y"
    for k, (top, extra_attrs) in enumerate(tail or []):
        nodes.append(helper.make_node(top, [out], [f"t{k}"], name=f"tail{k}", **extra_attrs))
        out = f"t{k}"
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)], initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model, out


def _grad(model, out, x, seed, rules="gradient", softmax="keep", runtime="ort"):
    gg = gradient_graph(model, ["x"], out, rules, softmax)
    feeds = {"x": np.asarray(x, np.float32), gg.seed_input: np.asarray(seed, np.float32)}
    if runtime == "ort":
        return ort_run(gg.model, [gg.grads["x"]], feeds)[0]
    return reference(gg.model).run([gg.grads["x"]], feeds)[0]


RUNTIMES = ["ort", "reference"]
X_RELU = [-1.0, 0.0, 2.0, 3.0, -0.5, 1e-3]
G_RELU = [1.0, -1.0, -2.0, 4.0, -3.0, 0.5]


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("rules, expected", [
    ("gradient", [0, 0, -2, 4, 0, 0.5]),  # 1[x>0] g, with Relu'(0) = 0
    ("guided_backprop", [0, 0, 0, 4, 0, 0.5]),  # 1[x>0] max(g, 0)
    ("deconvnet", [1, 0, 0, 4, 0, 0.5]),  # max(g, 0), whatever x
])
def test_relu_variants(rules, expected, runtime):
    model, out = _tiny("Relu", [6])
    np.testing.assert_array_equal(_grad(model, out, X_RELU, G_RELU, rules, runtime=runtime), np.float32(expected))


X_CLIP = [-1.0, 0.0, 3.0, 6.0, 7.0, 2.0, 5.5]
G_CLIP = [1.0, 1.0, -1.0, 1.0, 1.0, 2.0, -0.5]


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("opset", [10, 13])
@pytest.mark.parametrize("rules, expected", [
    ("gradient", [0, 0, -1, 0, 0, 2, -0.5]),  # strictly inside (0, 6) only: zero at both edges
    ("guided_backprop", [0, 0, 0, 0, 0, 2, 0]),  # keeps its mask: 1[0<x<6] max(g, 0)
    ("deconvnet", [1, 1, 0, 1, 1, 2, 0]),  # max(g, 0)
])
def test_relu6_variants(rules, expected, opset, runtime):
    if opset >= 11:
        model, out = _tiny("Clip", [7], [np.float32(0.0), np.float32(6.0)], opset=opset)
    else:
        model, out = _tiny("Clip", [7], attrs={"min": 0.0, "max": 6.0}, opset=opset)
    np.testing.assert_array_equal(_grad(model, out, X_CLIP, G_CLIP, rules, runtime=runtime), np.float32(expected))


@pytest.mark.parametrize("rules", ["guided_backprop", "deconvnet"])
def test_clip_with_min_only_zero_is_a_rectifier(rules):
    model, out = _tiny("Clip", [6], [np.float32(0.0)])
    expected = {"guided_backprop": [0, 0, 0, 4, 0, 0.5], "deconvnet": [1, 0, 0, 4, 0, 0.5]}[rules]
    np.testing.assert_array_equal(_grad(model, out, X_RELU, G_RELU, rules), np.float32(expected))


@pytest.mark.parametrize("rules", ["gradient", "guided_backprop", "deconvnet"])
def test_clip_with_nonzero_min_is_not_a_rectifier(rules):
    x = [-2.0, -1.0, -0.5, 0.5, 1.0, 2.0]
    g = [1.0, 1.0, -1.0, 3.0, 1.0, 1.0]
    model, out = _tiny("Clip", [6], [np.float32(-1.0), np.float32(1.0)])
    np.testing.assert_array_equal(_grad(model, out, x, g, rules), np.float32([0, 0, -1, 3, 0, 0]))


def test_variants_leave_other_ops_alone():
    model, out = _tiny("LeakyRelu", [4], attrs={"alpha": 0.5})
    x, g = [-1.0, 2.0, -3.0, 4.0], [-2.0, -2.0, 2.0, 2.0]
    for rules in ("guided_backprop", "deconvnet"):
        np.testing.assert_array_equal(_grad(model, out, x, g, rules), np.float32([-1, -2, 1, 2]))


@pytest.mark.parametrize("seed, expected", [
    # x = [1, -2] -> Relu -> a = [1, 0] -> MatMul W -> b = [1, -1] -> Relu -> y
    ([2.0, 3.0], {"gradient": [2, 0], "guided_backprop": [2, 0], "deconvnet": [0, 5]}),
    ([-1.0, 3.0], {"gradient": [-1, 0], "guided_backprop": [0, 0], "deconvnet": [0, 3]}),
])
def test_variants_apply_at_every_rectifier_of_a_chain(seed, expected):
    w = numpy_helper.from_array(np.array([[1, -1], [1, 1]], np.float32), "w")
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="r1"), helper.make_node("MatMul", ["a", "w"], ["b"], name="mm"),
             helper.make_node("Relu", ["b"], ["y"], name="r2")]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 10
    for rules, want in expected.items():
        np.testing.assert_array_equal(_grad(model, "y", [1.0, -2.0], seed, rules), np.float32(want), err_msg=rules)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_maxpool_ties_send_gradient_to_first_maximum(runtime):
    x = np.array([[[[1, 1, 0, 2], [1, 1, 2, 2], [3, 0, 5, 5], [0, 3, 5, 5]]]], np.float32)
    model, out = _tiny("MaxPool", [1, 1, 4, 4], attrs={"kernel_shape": [2, 2], "strides": [2, 2]})
    g = np.array([[[[1, 2], [3, 4]]]], np.float32)
    expected = np.array([[[[1, 0, 0, 2], [0, 0, 0, 0], [3, 0, 4, 0], [0, 0, 0, 0]]]], np.float32)
    np.testing.assert_array_equal(_grad(model, out, x, g, runtime=runtime), expected)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_overlapping_maxpool_ties_accumulate_at_first_maximum(runtime):
    x = np.full((1, 1, 3, 3), 7.0, np.float32)  # every window's first maximum is its top-left cell
    model, out = _tiny("MaxPool", [1, 1, 3, 3], attrs={"kernel_shape": [2, 2], "strides": [1, 1]}, opset=17)
    g = np.array([[[[1, 2], [3, 4]]]], np.float32)
    expected = np.array([[[[1, 2, 0], [3, 4, 0], [0, 0, 0]]]], np.float32)
    np.testing.assert_array_equal(_grad(model, out, x, g, runtime=runtime), expected)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_global_max_pool_and_reduce_max_ties_go_to_first(runtime):
    x = np.array([[[[2, 5], [5, 1]]]], np.float32)
    model, out = _tiny("GlobalMaxPool", [1, 1, 2, 2])
    np.testing.assert_array_equal(_grad(model, out, x, [[[[3.0]]]], runtime=runtime), [[[[0, 3], [0, 0]]]])
    model, out = _tiny("ReduceMax", [2, 3], attrs={"axes": [1], "keepdims": 0})
    x = np.array([[1, 4, 4], [6, 6, 6]], np.float32)
    np.testing.assert_array_equal(_grad(model, out, x, [2.0, 5.0], runtime=runtime), [[0, 2, 0], [5, 0, 0]])


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("op", ["Max", "Min"])
def test_max_min_ties_split_the_gradient_evenly(op, runtime):
    # torch.maximum/minimum's convention: tied inputs share the gradient (halves for two, thirds for three).
    x = np.float32([1.0, 2.0, 3.0, 5.0])
    c1 = np.float32({"Max": [1.0, 3.0, 2.0, 5.0], "Min": [1.0, 1.0, 4.0, 5.0]}[op])
    c2 = np.float32({"Max": [0.0, 2.5, 2.5, 5.0], "Min": [4.0, 4.0, 4.0, 5.0]}[op])
    # per position: x ties with c1 at the extremum, x loses to c1, x attains it alone, a three-way tie
    model, out = _tiny(op, [4], [c1, c2])
    np.testing.assert_array_equal(_grad(model, out, x, np.full(4, 6.0), runtime=runtime), np.float32([3, 0, 6, 2]))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_reduce_l2_is_zero_not_nan_where_the_norm_is_zero(runtime):
    model, out = _tiny("ReduceL2", [2, 3], attrs={"axes": [1], "keepdims": 0})
    x = np.array([[0, 0, 0], [3, 4, 0]], np.float32)
    np.testing.assert_allclose(_grad(model, out, x, [2.0, 5.0], runtime=runtime), [[0, 0, 0], [3, 4, 0]], rtol=1e-6)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_reduce_prod_with_zeros_gives_the_product_of_the_others(runtime):
    model, out = _tiny("ReduceProd", [3, 3], attrs={"axes": [1], "keepdims": 0})
    x = np.array([[0, 2, 3], [0, 0, 5], [2, 3, 4]], np.float32)
    np.testing.assert_array_equal(_grad(model, out, x, [1.0, 1.0, 2.0], runtime=runtime), [[6, 0, 0], [0, 0, 0], [24, 16, 12]])


SOFTMAX_X = np.array([[0.5, -1.0, 2.0], [1.0, 0.0, -2.0]], np.float32)
SOFTMAX_G = np.array([[1.0, 0.0, 0.0], [0.0, -2.0, 1.0]], np.float32)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_is_identity_at_the_output(op):
    model, out = _tiny(op, [2, 3], attrs={"axis": 1})
    np.testing.assert_array_equal(_grad(model, out, SOFTMAX_X, SOFTMAX_G, softmax="identity"), SOFTMAX_G)
    for rules in ("guided_backprop", "deconvnet"):
        np.testing.assert_array_equal(_grad(model, out, SOFTMAX_X, SOFTMAX_G, rules, softmax="identity"), SOFTMAX_G)


def test_softmax_identity_sees_through_shape_only_ops():
    model, out = _tiny("Softmax", [2, 3], attrs={"axis": 1}, tail=[("Flatten", {"axis": 0}), ("Identity", {})])
    g = SOFTMAX_G.reshape(1, 6)
    np.testing.assert_array_equal(_grad(model, out, SOFTMAX_X, g, softmax="identity"), SOFTMAX_G)


def test_softmax_kept_gives_the_true_jacobian():
    model, out = _tiny("Softmax", [2, 3], attrs={"axis": 1})
    got = _grad(model, out, SOFTMAX_X, SOFTMAX_G, softmax="keep")
    s = np.exp(SOFTMAX_X.astype(np.float64))
    s /= s.sum(axis=1, keepdims=True)
    expected = s * (SOFTMAX_G - np.sum(SOFTMAX_G * s, axis=1, keepdims=True))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    assert not np.allclose(got, SOFTMAX_G)


def test_softmax_not_at_the_output_keeps_its_rule():
    model, out = _tiny("Softmax", [2, 3], attrs={"axis": 1}, tail=[("Exp", {})])
    identity = _grad(model, out, SOFTMAX_X, SOFTMAX_G, softmax="identity")
    keep = _grad(model, out, SOFTMAX_X, SOFTMAX_G, softmax="keep")
    np.testing.assert_array_equal(identity, keep)


# -- normalisation, shape and indexing ops: refusals and degenerate inputs ----------------------------
def test_einsum_with_a_repeated_index_is_refused_clearly():
    case = Case("Einsum", "trace", [W(3, 3)], attrs={"equation": "ii->"}, opset=12)
    model = build(case, np.float32, (np.dtype(np.float32), ()))
    with pytest.raises(UnsupportedModelError, match=r"Einsum node 'einsum'.*repeats an index \('ii'"):
        gradient_graph(model, ["x0"], "y0")


def test_einsum_with_run_time_shared_sizes_at_opset12_asks_for_shapes():
    # A shared axis may broadcast (size 1 against n); summing it back at run time needs ReduceSum's
    # axes input (opset 13), so opset 12 asks for the concrete shapes, which specialising supplies.
    case = Case("Einsum", "dynamic-opset12", [W(2, 3, 4), W(4, 5)], attrs={"equation": "bij,jk->bik"}, opset=12, dynamic=True)
    model = build(case, np.float32, (np.dtype(np.float32), (2, 3, 5)))
    from onnxsal.errors import NeedsShapesError

    with pytest.raises(NeedsShapesError, match="Einsum node 'einsum'.*shares with other operands"):
        gradient_graph(model, ["x0"], "y0")


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("p", [1, 2])
def test_lp_normalization_is_zero_not_nan_where_the_norm_is_zero(p, runtime):
    model, out = _tiny("LpNormalization", [2, 3], attrs={"p": p, "axis": 1})
    x = np.array([[0, 0, 0], [3, -4, 1]], np.float32)
    g = np.array([[1, 2, 3], [2, 5, -1]], np.float32)
    got = _grad(model, out, x, g, runtime=runtime)
    np.testing.assert_array_equal(got[0], [0, 0, 0])
    x1, g1 = x[1].astype(np.float64), g[1].astype(np.float64)
    norm = np.sum(np.abs(x1) ** p) ** (1 / p)
    d = np.sign(x1) if p == 1 else x1 / norm
    np.testing.assert_allclose(got[1], (g1 - d * np.dot(g1, x1 / norm)) / norm, rtol=1e-5)


def test_scatter_updates_below_opset11_are_refused_clearly():
    case = Case("Scatter", "opset9-updates", [C(np.zeros((3, 3))), C(np.array([[2, 0, 1]], dtype=np.int64)), W(1, 3)], opset=9)
    model = build(case, np.float32, (np.dtype(np.float32), (3, 3)))
    with pytest.raises(UnsupportedModelError, match="GatherElements \\(opset 11\\)"):
        gradient_graph(model, ["x2"], "y0")
