"""blocks: Prefect adapters over the cyxwiz core."""
