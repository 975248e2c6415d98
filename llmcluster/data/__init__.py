"""Catalogs read at start-up: models, GPUs, datasets (JSON) and host-name patterns (text).

Plain, human-editable files; ``llmcluster.sim.catalog`` loads and checks them.
"""
