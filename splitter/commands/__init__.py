"""One module per CLI subcommand (``<name>_cmd.py``); shared argument helpers in ``_common``."""
