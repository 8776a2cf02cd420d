"""What job programs import: the job bridge client (httpx only; nothing else of hypha_sm)."""
