"""tasks: Prefect adapters over the cyxwiz core."""
