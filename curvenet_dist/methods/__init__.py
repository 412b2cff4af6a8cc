"""The allocate stage's methods, one module each, behind the interface in base.py."""
