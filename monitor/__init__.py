"""The metrics history store and the monitoring dashboard (not built yet)."""
