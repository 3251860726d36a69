"""The runner: one command that starts the embedded pipeline, plus the CLI around it."""
