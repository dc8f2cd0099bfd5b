"""Every persisted format and its schema, written and read in one place: units, records, schemas."""
