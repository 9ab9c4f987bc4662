from tests._softhsm import softhsm, softhsm_session

__all__ = ["softhsm", "softhsm_session"]
