"""Native ONNX LSTM / GRU / RNN nodes, unrolled over time into IR nodes."""
