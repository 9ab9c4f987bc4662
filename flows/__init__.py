"""flows: Prefect adapters over the cyxwiz core."""
