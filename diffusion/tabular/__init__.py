"""Tables: schemas, their encoding as vectors, loading, splitting and storing."""
