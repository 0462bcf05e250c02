"""Tables out: schemas defined once, BigQuery and file sinks, the Arrow shuffle coder."""
