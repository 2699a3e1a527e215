"""One module per `silr` command (`silr.cli.COMMANDS`); each dvc.yaml stage runs one.

The top layer: no stage module imports another.
"""
