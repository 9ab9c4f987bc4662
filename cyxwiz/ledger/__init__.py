"""cyxwiz.ledger"""
