"""Training: the job spec's training part (:mod:`.spec`), and the runtime that runs in the sandbox.

Importing this package stays light (no torch); the runtime and model builder import torch themselves.
"""
