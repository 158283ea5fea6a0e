"""Pipelines: the ordered steps, composed from the stage packages; the CLI and orchestrators call these."""
