"""The normalised policy a manifest becomes, and the exposure difference of two policies (pure)."""
