"""Grafana dashboards as code; ``python -m grafana.generate`` writes them as JSON."""
