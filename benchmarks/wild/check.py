"""The correctness check for files with no framework model behind them: central differences.

For a random direction u, the gradient's directional derivative <grad, u> must match
(f(x + h u) - f(x - h u)) / 2h of the explained scalar f, computed on the forward graph alone.
f is what onnxsal seeds:

- the default run (target None, softmax as identity): the sum of each sample's top-class map, taken
  from the forward graph with its head Softmax/LogSoftmax turned into Identity (the logits);
- the seeded run (a float seed s of the output's shape, softmax kept): sum(s * output).

Two checks, the first deciding where it can run:

1. float64 through onnx.reference (`float64_check`): the file's weights and casts widened to double,
   h = 1e-5, then 1e-7 if that disagrees (truncation ~1e-10; the larger step because onnx.reference
   keeps a few steps in float32, LayerNormalization's stash_type for one, which a small h magnifies;
   the smaller one because a 224 x 224 ReLU net has units within 1e-5 of their kink), 2 directions,
   relative tolerance 1e-3. onnxsal's float32 gradient against float64 truth: float32 rounding
   is ~1e-6 relative, so 1e-3 is a wide margin that no wrong rule stays inside. It is used only when
   the float64 forward output agrees with onnxruntime's float32 one to 1e-4 (relative to the largest
   value): where it does not (an op onnx.reference computes differently, or a file so ill-conditioned
   that float32 lands in another linear piece), it is no reference and the float32 check decides.
2. float32 through onnxruntime (`directional_check`, always recorded; the verdict where onnx.reference
   lacks an op or runs out of time): f carries a rounding error of about 1e-7 |f| (more after long
   sums), so the quotient's error grows like 1e-7 |f| / h while the truncation error of a smooth f
   shrinks like h^2, and a ReLU network is piecewise linear, so a small h only risks a kink. Each of
   3 directions is tried at h = 1e-2, 1e-3, 1e-4 (inputs are of order 1) and passes when one agrees
   to a relative 2e-2 plus the allowance 3 sigma / h, sigma being the measured rounding noise of f
   (its spread under perturbations of a few ulps, linear change taken out). The analytic side uses
   the perturbation actually fed (x + h u rounded to float32). Files that compute in float16: h =
   0.1, 0.03, 0.01 and tolerance 0.1.

In both, the relative error's denominator has a floor of |grad| |u| / sqrt(n), the size of a typical
projection, so that a near-orthogonal u does not magnify rounding into a failure (a gradient wrong in
a part that carries more than the tolerance's share of its norm still fails).
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper
from onnx.reference.op_run import OpRun

SHAPE_ONLY = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Transpose", "Cast"}
STEPS = (1e-2, 1e-3, 1e-4)
TOLERANCE = 2e-2
STEPS_FP16 = (1e-1, 3e-2, 1e-2)
TOLERANCE_FP16 = 1e-1
DRAWS = 3
FORWARD_AGREEMENT = 1e-4  # float64 reference and float32 onnxruntime outputs, relative to the largest


def computes_in_float16(model: onnx.ModelProto) -> bool:
    """Whether any weight or cast of the file is float16 (then float32 tolerances do not apply)."""
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
        return True
    for n in model.graph.node:
        for a in n.attribute:
            if n.op_type == "Cast" and a.name == "to" and a.i == onnx.TensorProto.FLOAT16:
                return True
            if n.op_type == "Constant" and a.t.data_type == onnx.TensorProto.FLOAT16:
                return True
    return False


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy whose graph outputs are `names` (inner values included, typed by onnxruntime at run time)."""
    m = copy.deepcopy(model)
    known = {o.name: o for o in m.graph.output}
    del m.graph.output[:]
    m.graph.output.extend(known.get(n) or helper.make_empty_tensor_value_info(n) for n in names)
    return m


def logits_view(model: onnx.ModelProto, output: str) -> onnx.ModelProto:
    """A copy where the Softmax/LogSoftmax that produces `output` (up to shape-only ops) is an Identity."""
    m = copy.deepcopy(model)
    producer = {o: n for n in m.graph.node for o in n.output}
    node = producer.get(output)
    while node is not None and node.op_type in SHAPE_ONLY:
        node = producer.get(node.input[0])
    if node is not None and node.op_type in ("Softmax", "LogSoftmax"):
        node.op_type = "Identity"
        del node.attribute[:]
    return m


def cut_at(model: onnx.ModelProto, values: list[str], shapes: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy where each inner value of `values` is a graph input instead of a node's output."""
    m = copy.deepcopy(model)
    inner = [v for v in values if v not in {i.name for i in m.graph.input}]
    if not inner:
        return m
    kept = [n for n in m.graph.node if not set(n.output) & set(inner)]
    del m.graph.node[:]
    m.graph.node.extend(kept)
    for v in inner:
        a = shapes[v]
        m.graph.input.append(helper.make_tensor_value_info(v, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape)))
    return m


def top_class_ties(scores: np.ndarray, rel: float = 1e-4) -> bool:
    """Whether some sample's two best class scores (axis 1, maps summed) lie within `rel` of each other:
    then which class the graph's ArgMax picks is float rounding, and the default target is arbitrary
    (a softmax over the last axis of [N, T, C] sums to 1 at every t, so every "class" t ties)."""
    summed = scores.reshape(scores.shape[0], scores.shape[1], -1).astype(np.float64).sum(-1)
    if summed.shape[1] < 2:
        return False
    top2 = np.sort(summed, axis=1)[:, -2:]
    return bool(np.any(top2[:, 1] - top2[:, 0] <= rel * np.maximum(np.abs(top2[:, 1]), 1.0)))


def top_class_scalar(scores: np.ndarray):
    """f for the argmax seed: each sample's top class on axis 1 (its map summed over later axes)."""
    summed = scores.reshape(scores.shape[0], scores.shape[1], -1).sum(-1) if scores.ndim > 2 else scores
    top = summed.argmax(axis=1)

    def f(out: np.ndarray) -> float:
        return float(sum(out[n, c].astype(np.float64).sum() for n, c in enumerate(top)))
    return f


def seeded_scalar(seed: np.ndarray):
    def f(out: np.ndarray) -> float:
        return float((seed.astype(np.float64) * out.astype(np.float64)).sum())
    return f


def _moved(feeds, u, names, h):
    """feeds with x + h u in the explained values, rounded to their dtype as onnxruntime will see them."""
    return {**feeds, **{k: (feeds[k].astype(np.float64) + h * u[k]).astype(feeds[k].dtype) for k in names}}


def _step(plus, minus, names) -> dict[str, np.ndarray]:
    """The perturbation actually fed, after rounding: (x_plus - x_minus) / 2 in float64."""
    return {k: (plus[k].astype(np.float64) - minus[k].astype(np.float64)) / 2 for k in names}


def rounding_noise(sess, output, scalar, feeds, u, names, dot) -> float:
    """How much f moves for a perturbation too small to matter (a few ulps of the inputs): the float
    rounding of the forward pass, which the difference quotient divides by 2h."""
    base = scalar(sess.run([output], feeds)[0])
    devs = []
    for eps in (1e-6, -1e-6, 2e-6, -2e-6):
        moved = _moved(feeds, u, names, eps)
        delta = {k: moved[k].astype(np.float64) - feeds[k].astype(np.float64) for k in names}
        devs.append(scalar(sess.run([output], moved)[0]) - base - dot(delta))
    return float(np.sqrt(np.mean(np.square(devs))))


def directional_check(sess: ort.InferenceSession, output: str, scalar, feeds: dict[str, np.ndarray],
                      grads: dict[str, np.ndarray], fp16: bool, seed: int = 0) -> dict:
    """Compare <grad, u> with central differences for DRAWS random u; returns the per-draw record.

    The analytic side uses the perturbation actually fed (inputs rounded to float32), and the
    allowance adds 3 sigma / h, with sigma the measured rounding noise of f, to the relative tolerance.
    """
    rng = np.random.default_rng(seed)
    steps, tol = (STEPS_FP16, TOLERANCE_FP16) if fp16 else (STEPS, TOLERANCE)
    names = list(grads)
    g64 = {k: grads[k].astype(np.float64) for k in names}
    n = sum(grads[k].size for k in names)
    g_norm = float(np.sqrt(sum(np.sum(g64[k] ** 2) for k in names)))

    def dot(v):
        return float(sum(np.sum(g64[k] * v[k]) for k in names))
    draws = []
    for _ in range(DRAWS):
        u = {k: rng.standard_normal(feeds[k].shape) for k in names}
        u_norm = float(np.sqrt(sum(np.sum(u[k] ** 2) for k in names)))
        floor = g_norm * u_norm / np.sqrt(max(n, 1)) + 1e-30  # a typical projection |<grad, u>|
        sigma = rounding_noise(sess, output, scalar, feeds, u, names, dot)
        best = None
        for h in steps:
            plus, minus = _moved(feeds, u, names, h), _moved(feeds, u, names, -h)
            analytic = dot(_step(plus, minus, names)) / h
            numeric = (scalar(sess.run([output], plus)[0]) - scalar(sess.run([output], minus)[0])) / (2 * h)
            scale = max(abs(numeric), abs(analytic), floor)
            allowance = tol + 3 * sigma / h / scale
            rel = abs(numeric - analytic) / scale
            entry = {"h": h, "analytic": analytic, "numeric": numeric, "rel": rel, "allowed": allowance, "noise": sigma}
            if best is None or rel - allowance < best["rel"] - best["allowed"]:
                best = entry
            if rel <= allowance:
                break
        draws.append(best)
    passed = all(d["rel"] <= d["allowed"] for d in draws)
    worst = max(draws, key=lambda d: d["rel"] - d["allowed"])
    return {"passed": bool(passed), "worst_rel": worst["rel"], "tolerance": worst["allowed"], "grad_norm": g_norm, "draws": draws}


def as_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy computing in float64: float weights, constants, inputs and casts turned to double
    (for onnx.reference, which runs every op in float64, unlike onnxruntime's CPU kernels)."""
    from onnx import numpy_helper

    m = copy.deepcopy(model)
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)

    def widen(t: onnx.TensorProto) -> None:
        if t.data_type in floats:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))

    def walk(graph: onnx.GraphProto) -> None:
        for t in graph.initializer:
            widen(t)
        for v in list(graph.input) + list(graph.output):
            if v.type.tensor_type.elem_type in floats:
                v.type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
        del graph.value_info[:]
        for n in graph.node:
            for a in n.attribute:
                if a.name == "to" and n.op_type == "Cast" and a.i in floats:
                    a.i = onnx.TensorProto.DOUBLE
                if a.type == onnx.AttributeProto.TENSOR:
                    widen(a.t)
                if a.name == "dtype" and a.i in floats:
                    a.i = onnx.TensorProto.DOUBLE
                if a.HasField("g"):
                    walk(a.g)
    walk(m.graph)
    return m


class LayerNormalization(OpRun):
    """LayerNormalization for onnx.reference in the input's precision: onnx.reference computes mean and
    variance in `stash_type` (float32 by default) and refuses float64 there, which would leave float32
    rounding (1e-7 / h) inside every "float64" difference quotient."""

    op_domain = ""

    def _run(self, x, scale, bias=None, axis=None, epsilon=None, stash_type=None):
        axis = -1 if axis is None else axis
        axes = tuple(range(axis % x.ndim, x.ndim))
        mean = x.mean(axis=axes, keepdims=True)
        inv_std = 1.0 / np.sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True) + (1e-5 if epsilon is None else epsilon))
        y = (x - mean) * inv_std * scale + (0 if bias is None else bias)
        return (y.astype(x.dtype), mean, inv_std)


def float64_check(model: onnx.ModelProto, output: str, scalar, feeds: dict[str, np.ndarray],
                  grads: dict[str, np.ndarray], draws: int = 2, h: float = 1e-5, seed: int = 0) -> dict:
    """The same directional check in float64 through onnx.reference, at h = 1e-5 and then 1e-7 (see the
    module docstring); far above float64 rounding, so the quotient is good to about 1e-6,
    and a float32 gradient off by more than 1e-3 of a typical projection |grad| |u| / sqrt(n) (the
    denominator's floor, so that a near-orthogonal u does not magnify float32 rounding) is wrong."""
    from onnx.reference import ReferenceEvaluator

    ref = ReferenceEvaluator(as_float64(model), new_ops=[LayerNormalization])
    rng = np.random.default_rng(seed)
    names = list(grads)
    x64 = {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in feeds.items()}
    y32 = session(model).run([output], feeds)[0].astype(np.float64)
    y64 = ref.run([output], x64)[0]
    gap = float(np.abs(y64 - y32).max() / max(np.abs(y64).max(), 1e-30))
    if not np.isfinite(gap) or gap > FORWARD_AGREEMENT:
        return {"skipped": f"onnx.reference's float64 forward differs from onnxruntime's float32 one by {gap:.2g} "
                           f"(relative, over {FORWARD_AGREEMENT:g}), so it is no reference for this file"}
    n = sum(grads[k].size for k in names)
    g_norm = float(np.sqrt(sum(np.sum(grads[k].astype(np.float64) ** 2) for k in names)))
    out = []
    for _ in range(draws):
        u = {k: rng.standard_normal(feeds[k].shape) for k in names}
        u_norm = float(np.sqrt(sum(np.sum(u[k] ** 2) for k in names)))
        floor = g_norm * u_norm / np.sqrt(max(n, 1)) + 1e-30
        analytic = float(sum(np.sum(grads[k].astype(np.float64) * u[k]) for k in names))
        best = None
        for step in (h, h / 100):  # the larger step sidesteps float32 left inside onnx.reference, the smaller kinks
            f = [scalar(ref.run([output], {**x64, **{k: x64[k] + s * step * u[k] for k in names}})[0]) for s in (1, -1)]
            numeric = (f[0] - f[1]) / (2 * step)
            rel = abs(numeric - analytic) / max(abs(numeric), abs(analytic), floor)
            if best is None or rel < best["rel"]:
                best = {"h": step, "analytic": analytic, "numeric": numeric, "rel": rel}
            if rel <= 1e-3:
                break
        out.append(best)
    worst = max(d["rel"] for d in out)
    return {"passed": bool(worst <= 1e-3), "worst_rel": worst, "tolerance": 1e-3, "draws": out}
