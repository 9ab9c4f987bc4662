"""agents: Prefect adapters over the cyxwiz core."""
