#!/bin/bash
# kafka-topics.sh as in Kafka's distribution (the Maven artifact kafka-tools).
KAFKA_LOG4J_CONFIG=/opt/kafka/config/tools-log4j2.xml exec /opt/kafka/bin/kafka-run-class org.apache.kafka.tools.TopicCommand "$@"
