"""The streams worker: a Faust agent folds event envelopes into exact event-time windows and alert
rules, and emits final window aggregates, alert changes and late records."""
