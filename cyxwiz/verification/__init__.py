"""cyxwiz.verification"""
