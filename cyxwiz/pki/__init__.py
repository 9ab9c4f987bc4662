"""cyxwiz.pki"""
