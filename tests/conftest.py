"""Test-session settings. The engine's tensors in tests are tiny: with torch's default thread
count, OpenMP spin-waiting on a busy 2-core machine made runs 5-40x slower, so tests use one
thread (the CLI chooses its own default, see `popqorn --help`)."""

import torch

torch.set_num_threads(1)
