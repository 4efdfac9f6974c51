"""Inference engines. Each one sits behind `base.Engine`; `registry.build_engine` makes them from config."""
