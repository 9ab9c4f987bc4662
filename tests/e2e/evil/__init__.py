"""Flow code of a dishonest node (end-to-end attack tests, SPEC F1)."""
