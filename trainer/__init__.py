"""m2kd trainer."""
