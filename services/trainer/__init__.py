"""The trainer service: Kafka examples in, LAE learning, Redis snapshots out."""
