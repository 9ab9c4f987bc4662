"""The cyxwiz node agent, a Prefect worker type (``cyxwiz-sandbox``).

Prefect imports this package through the ``prefect.collections`` entry point; importing the worker class
here is what registers the type, so ``prefect worker start --type cyxwiz-sandbox`` finds it.
"""

from agents.worker import CyxwizSandboxWorker

__all__ = ["CyxwizSandboxWorker"]
