"""`python -m mlptrain COMMAND ...`: the `mlptrain` command (mlptrain.commands)."""

from mlptrain.commands import entry

entry()
