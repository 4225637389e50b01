"""LSTM, GRU, RNN, Loop and Scan for onnx.reference, with every attribute the specification defines.

onnx 1.23's reference implementations ignore `activations` (LSTM, GRU; RNN knows Tanh and Affine
only), `activation_alpha/beta`, `clip` and `input_forget`. These follow the specification as
onnxruntime implements it (tests/test_recurrent.py checks them against onnxruntime on every table
case): clip bounds each activation's input, not the cell state fed to h; input_forget sets
f = 1 - i; alphas and betas are consumed in order by the activations that take them.

onnx 1.23's Loop runs no iteration when the condition input is left out and concatenates scan
outputs along their own axis 0 (np.vstack) where the specification and onnxruntime stack them on a
new axis; its Scan knows axis 0 and the forward direction only. The replacements below do what the
specification says.
"""

from __future__ import annotations

import numpy as np
from onnx.reference.op_run import OpRun

_TAKES = {"affine": (1, 1), "leakyrelu": (1, 0), "thresholdedrelu": (1, 0), "scaledtanh": (1, 1),
          "hardsigmoid": (1, 1), "elu": (1, 0)}
_DEFAULTS = {"leakyrelu": (0.01, 0.0), "thresholdedrelu": (1.0, 0.0), "hardsigmoid": (0.2, 0.5), "elu": (1.0, 0.0),
             "affine": (1.0, 0.0), "scaledtanh": (1.0, 1.0)}


def _function(name: str, alpha: float, beta: float):
    return {
        "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
        "tanh": np.tanh,
        "relu": lambda x: np.maximum(x, 0),
        "affine": lambda x: alpha * x + beta,
        "leakyrelu": lambda x: np.where(x >= 0, x, alpha * x),
        "thresholdedrelu": lambda x: np.where(x > alpha, x, 0),
        "scaledtanh": lambda x: alpha * np.tanh(beta * x),
        "hardsigmoid": lambda x: np.clip(alpha * x + beta, 0, 1),
        "elu": lambda x: np.where(x >= 0, x, alpha * (np.exp(x) - 1)),
        "softsign": lambda x: x / (1 + np.abs(x)),
        "softplus": lambda x: np.log1p(np.exp(x)),
    }[name]


def _activations(names, alphas, betas, default, dirs):
    names = [n.decode() if isinstance(n, bytes) else n for n in (names or default * dirs)]
    if len(names) == len(default) and dirs == 2:
        names = names * 2
    alphas, betas = list(alphas if alphas is not None else []), list(betas if betas is not None else [])
    out = []
    for n in names:
        key = n.lower()
        alpha, beta = _DEFAULTS.get(key, (0.0, 0.0))
        takes_alpha, takes_beta = _TAKES.get(key, (0, 0))
        if takes_alpha and alphas:
            alpha = alphas.pop(0)
        if takes_beta and betas:
            beta = betas.pop(0)
        out.append(_function(key, alpha, beta))
    per = len(default)
    return [out[d * per:(d + 1) * per] for d in range(dirs)]


class _Recurrent(OpRun):
    op_domain = ""
    gates = 1
    default: list[str] = []

    def _common(self, X, W, R, B, initial_states, activations, activation_alpha, activation_beta, clip, direction, layout):
        direction = direction.decode() if isinstance(direction, bytes) else (direction or "forward")
        dirs = W.shape[0]
        hidden = R.shape[-1]
        if layout:
            X = np.swapaxes(X, 0, 1)
            initial_states = [None if s is None else np.swapaxes(s, 0, 1) for s in initial_states]
        steps, batch = X.shape[0], X.shape[1]
        if B is None:
            B = np.zeros((dirs, 2 * self.gates * hidden), X.dtype)
        states = [np.zeros((dirs, batch, hidden), X.dtype) if s is None else s for s in initial_states]
        acts = _activations(activations, activation_alpha, activation_beta, self.default, dirs)
        bound = (lambda x: np.clip(x, -clip, clip)) if clip is not None else (lambda x: x)
        ys, finals = [], []
        for d in range(dirs):
            backward = direction == "reverse" or d == 1
            order = range(steps - 1, -1, -1) if backward else range(steps)
            carry = [s[d] for s in states]
            y = [None] * steps
            for t in order:
                carry = self.cell(X[t], W[d], R[d], B[d], carry, acts[d], bound, d)
                y[t] = carry[0]
            ys.append(np.stack(y))
            finals.append(carry)
        Y = np.stack(ys, axis=1)  # [T, D, N, H]
        outs = [np.stack([f[k] for f in finals]) for k in range(len(finals[0]))]
        if layout:
            Y = np.transpose(Y, [2, 0, 1, 3])
            outs = [np.swapaxes(o, 0, 1) for o in outs]
        return tuple(v.astype(X.dtype) for v in [Y, *outs][: len(self.output)])


class RNN(_Recurrent):
    gates, default = 1, ["Tanh"]

    def cell(self, x, w, r, b, carry, acts, bound, d):
        (f,) = acts
        h = carry[0]
        return [f(bound(x @ w.T + h @ r.T + b[:len(b) // 2] + b[len(b) // 2:]))]

    def _run(self, X, W, R, B=None, sequence_lens=None, initial_h=None, activation_alpha=None, activation_beta=None,
             activations=None, clip=None, direction=None, hidden_size=None, layout=None):
        return self._common(X, W, R, B, [initial_h], activations, activation_alpha, activation_beta, clip, direction, layout)


class GRU(_Recurrent):
    gates, default = 3, ["Sigmoid", "Tanh"]

    def cell(self, x, w, r, b, carry, acts, bound, d):
        f, g = acts
        h = carry[0]
        n = r.shape[1]
        wz, wr, wh = np.split(w, 3)
        rz, rr, rh = np.split(r, 3)
        wbz, wbr, wbh, rbz, rbr, rbh = np.split(b, 6)
        z = f(bound(x @ wz.T + h @ rz.T + wbz + rbz))
        rg = f(bound(x @ wr.T + h @ rr.T + wbr + rbr))
        if self.linear_before_reset:
            cand = g(bound(x @ wh.T + rg * (h @ rh.T + rbh) + wbh))
        else:
            cand = g(bound(x @ wh.T + (rg * h) @ rh.T + rbh + wbh))
        assert cand.shape[-1] == n
        return [(1 - z) * cand + z * h]

    def _run(self, X, W, R, B=None, sequence_lens=None, initial_h=None, activation_alpha=None, activation_beta=None,
             activations=None, clip=None, direction=None, hidden_size=None, layout=None, linear_before_reset=None):
        self.linear_before_reset = linear_before_reset or 0
        return self._common(X, W, R, B, [initial_h], activations, activation_alpha, activation_beta, clip, direction, layout)


class LSTM(_Recurrent):
    gates, default = 4, ["Sigmoid", "Tanh", "Tanh"]

    def cell(self, x, w, r, b, carry, acts, bound, d):
        f, g, h_act = acts
        h, c = carry
        pi, po, pf = np.split(self.peepholes[d], 3)
        gi, go, gf, gc = np.split(x @ w.T + h @ r.T + b[:len(b) // 2] + b[len(b) // 2:], 4, axis=-1)
        i = f(bound(gi + pi * c))
        forget = 1 - i if self.input_forget else f(bound(gf + pf * c))
        c = forget * c + i * g(bound(gc))
        o = f(bound(go + po * c))
        return [o * h_act(c), c]

    def _run(self, X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None, activation_alpha=None,
             activation_beta=None, activations=None, clip=None, direction=None, hidden_size=None, input_forget=None,
             layout=None):
        self.input_forget = input_forget or 0
        self.peepholes = P if P is not None else np.zeros((W.shape[0], 3 * R.shape[-1]), X.dtype)
        return self._common(X, W, R, B, [initial_h, initial_c], activations, activation_alpha, activation_beta, clip,
                            direction, layout)



class Loop(OpRun):
    op_domain = ""

    def need_context(self) -> bool:
        return True

    def _run(self, M, cond, *initial, context=None, body=None, attributes=None, bindings=None):
        names_in = self.body.input_names
        carried = list(initial)
        n = len(carried)
        scans: list[list[np.ndarray]] = []
        keep_going = True if cond is None else bool(cond)
        it = 0
        while keep_going and (M is None or it < int(M)):
            inputs = dict(context or {})
            inputs.update({names_in[0]: np.array(it, np.int64), names_in[1]: np.array(keep_going)})
            inputs.update(zip(names_in[2:], carried))
            outs = self._run_body(inputs, attributes=attributes, bindings=bindings)
            keep_going, carried = bool(outs[0]), list(outs[1:1 + n])
            if not scans:
                scans = [[] for _ in outs[1 + n:]]
            for k, v in enumerate(outs[1 + n:]):
                scans[k].append(v)
            it += 1
        return tuple(carried + [np.stack(v) for v in scans])


class Scan(OpRun):
    op_domain = ""

    def need_context(self) -> bool:
        return True

    def _run(self, *args, context=None, body=None, num_scan_inputs=None, scan_input_axes=None, scan_input_directions=None,
             scan_output_axes=None, scan_output_directions=None, attributes=None, bindings=None):
        m = num_scan_inputs
        n_state = len(args) - m
        states, xs = list(args[:n_state]), args[n_state:]
        axes = [a % x.ndim for a, x in zip(scan_input_axes or [0] * m, xs)]
        dirs = scan_input_directions or [0] * m
        steps = xs[0].shape[axes[0]]
        names_in = self.body.input_names
        results: list[list[np.ndarray]] = []
        for t in range(steps):
            inputs = dict(context or {})
            inputs.update(zip(names_in[:n_state], states))
            for j, x in enumerate(xs):
                inputs[names_in[n_state + j]] = np.take(x, steps - 1 - t if dirs[j] else t, axis=axes[j])
            outs = self._run_body(inputs, attributes=attributes, bindings=bindings)
            states = list(outs[:n_state])
            if not results:
                results = [[] for _ in outs[n_state:]]
            for k, v in enumerate(outs[n_state:]):
                results[k].append(v)
        out_axes = scan_output_axes or [0] * len(results)
        out_dirs = scan_output_directions or [0] * len(results)
        stacked = [np.stack(v[::-1] if d else v, axis=a % (v[0].ndim + 1)) for v, a, d in zip(results, out_axes, out_dirs)]
        return tuple(states + stacked)


RECURRENT_OPS = [LSTM, GRU, RNN, Loop, Scan]
