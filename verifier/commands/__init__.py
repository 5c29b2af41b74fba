"""One module per popqorn subcommand (see verifier/cli.py)."""
