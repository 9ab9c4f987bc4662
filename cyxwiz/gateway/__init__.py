"""cyxwiz.gateway"""
