"""Python config presets (``get_config()`` returns an ``ml_collections.ConfigDict``)."""
