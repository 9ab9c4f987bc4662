"""cyxwiz.transport"""
