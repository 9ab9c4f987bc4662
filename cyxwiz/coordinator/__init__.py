"""cyxwiz.coordinator"""
