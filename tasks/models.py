"""Models of the tasks app (the dead-letter model arrives with the DLQ)."""
