"""Device profiles shipped with edgellm (installed as ``edgellm.device_profiles``).

Each ``*.toml`` here describes one device; the schema is ``edgellm/devices/schema.py`` and
every hardware figure carries its source in a comment.  This folder holds data only.
"""
