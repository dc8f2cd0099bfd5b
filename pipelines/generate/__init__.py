"""Generate (DESIGN step 4): backends behind one interface, one work unit at a time, PNG encoding with labels."""
