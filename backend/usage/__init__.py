"""What each conversation costs: the usage ledger, prices, totals and quotas (sql/024)."""
