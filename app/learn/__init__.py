"""The Learn tab: what the page shows and what the claims ledger found."""
