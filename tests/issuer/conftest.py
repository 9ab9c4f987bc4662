# SoftHSM2 token fixtures (tests/_softhsm.py): the issuing CA key held in PKCS#11 (A7).
from tests._softhsm import softhsm, softhsm_session

__all__ = ["softhsm", "softhsm_session"]
