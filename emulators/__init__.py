"""Local stand-ins for Google Cloud services (BigQuery, Pub/Sub), run offline as child processes."""
