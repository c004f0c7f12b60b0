"""Built-in masking profiles (YAML), loaded by ``masking.builtin``."""
