"""m2kd.runtime: the deployable core (bundle, backbones, engine, inference, CLI root)."""

__version__ = "0.1.0"
