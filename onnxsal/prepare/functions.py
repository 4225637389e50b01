"""Lowering by ONNX function body: an op with no gradient rule whose schema defines it as a function
of other ops (onnx.defs knows 48 such) is expanded into that body and differentiated through it."""
