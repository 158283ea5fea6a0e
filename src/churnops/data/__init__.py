"""Data: source readers, the raw-table contract, validation, the raw lake and the simulated shop."""
