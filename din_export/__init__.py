"""din_export: prepare data, train a DIN, export it to ONNX and verify parity (needs torch)."""

__version__ = "0.1.0"
