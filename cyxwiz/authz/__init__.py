"""cyxwiz.authz"""
