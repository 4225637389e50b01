"""The public robustness corpus (issue 12): models built from registry packages, exported to ONNX, gradients checked against autograd."""
