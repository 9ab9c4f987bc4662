"""cyxwiz.tokens"""
