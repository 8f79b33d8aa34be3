"""Composition: config, pipeline, sorting policy, event storage, CLI, daemon, GUI."""
