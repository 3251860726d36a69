"""Alert delivery: alert records to Alertmanager and signed webhooks."""
