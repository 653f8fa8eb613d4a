"""m2kd export."""
