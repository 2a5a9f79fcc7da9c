"""The entry layer: the `warmstart` CLI, settings and (later) the Prefect flows that call the stages."""
