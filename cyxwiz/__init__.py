"""cyxwiz: the security core of a GPU-rental marketplace for ML training.

This package imports no Prefect. ``tasks/``, ``flows/``, ``agents/`` and ``blocks/`` adapt it to Prefect.
"""

__version__ = "0.1.0"
