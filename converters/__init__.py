"""Framework -> ONNX converters (Keras/TensorFlow, PyTorch); their heavy dependencies are imported lazily."""
