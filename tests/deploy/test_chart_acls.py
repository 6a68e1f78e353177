"""The local SASL broker's users hold exactly the ACLs of the chart's KafkaUsers.

``tickpipe_localstack.kafka_sasl.CHART_ACLS`` mirrors ``templates/kafka-topics-users.yaml``
so that ``tests/integration/test_kafka_sasl.py`` proves the chart's ACLs suffice; this keeps
the mirror honest when either side changes.
"""

from __future__ import annotations

from tests.deploy.chart_support import helm_binary, render
from tickpipe_localstack import kafka_sasl


def _acl_set(acls: list[dict[str, object]]) -> set[tuple[str, str, str]]:
    triples = set()
    for acl in acls:
        resource = acl["resource"]
        assert isinstance(resource, dict)
        assert resource["patternType"] == "literal", acl
        operations = acl["operations"]
        assert isinstance(operations, list)
        for operation in operations:
            triples.add((str(resource["type"]), str(resource["name"]), str(operation).upper()))
    return triples


def test_the_local_users_acls_are_the_charts() -> None:
    helm_binary()
    chart = render("defaults", None)
    kafka = chart.values()["kafka"]
    names = {
        kafka_sasl.TICKS_TOPIC: kafka["topics"]["ticks"]["name"],
        kafka_sasl.DLQ_TOPIC: kafka["topics"]["dlq"]["name"],
        kafka_sasl.CONSUMER_GROUP: kafka["consumerGroup"],
    }
    assert all(local == chart_name for local, chart_name in names.items()), names
    which_name = {
        "ticks": kafka_sasl.TICKS_TOPIC,
        "dlq": kafka_sasl.DLQ_TOPIC,
        "group": kafka_sasl.CONSUMER_GROUP,
    }
    users = chart.of_kind("KafkaUser")
    assert len(users) == len(kafka_sasl.SERVICES)
    for user in users:
        service = user["metadata"]["labels"]["app.kubernetes.io/component"]
        assert user["spec"]["authentication"]["type"] == "scram-sha-512"
        kind = "consumer" if service == "consumer" else "producer"
        local = {
            (resource, which_name[which], operation.upper())
            for resource, which, operations in kafka_sasl.CHART_ACLS[kind]
            for operation in operations
        }
        assert _acl_set(user["spec"]["authorization"]["acls"]) == local, service
