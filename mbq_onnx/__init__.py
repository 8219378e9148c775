"""mbq-onnx: MoBiQuant (Mixture-of-Bits Quantization) as a deployment pipeline on ONNX Runtime."""

__version__ = "0.1.0"
