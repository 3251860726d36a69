"""Stream processing: Faust agents that turn event envelopes into final window aggregates."""
