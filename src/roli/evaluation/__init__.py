"""Clean and attacked accuracy over a DataLoader, sanity checks and reports."""
