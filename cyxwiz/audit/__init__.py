"""cyxwiz.audit"""
