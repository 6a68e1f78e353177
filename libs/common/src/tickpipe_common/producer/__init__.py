"""The producer runtime both producers share: stream → normalise → filter → backup + Kafka."""
