"""Prefect flows composing cyxwiz tasks: the job lifecycle, the node's sandboxed training, maintenance."""
