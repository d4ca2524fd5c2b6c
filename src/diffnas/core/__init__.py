"""The minimal core: hook specifications, component protocols, value types, errors and the engine."""
