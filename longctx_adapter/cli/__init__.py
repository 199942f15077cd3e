"""The `longctx-adapter` command line."""

from longctx_adapter.cli.main import main

__all__ = ["main"]
