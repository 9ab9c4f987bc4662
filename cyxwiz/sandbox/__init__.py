"""cyxwiz.sandbox"""
