"""ONNX Loop (provable constant trip count) and Scan, unrolled into IR nodes."""
