"""Serving logs in: the record contract, Arrow blocks, Pub/Sub messages, file reads."""
