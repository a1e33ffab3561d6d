"""The `facerest` command line: one module per command group, assembled in main.py."""

from facerest.cli.main import app, main

__all__ = ["app", "main"]
