"""cyxwiz.storage"""
