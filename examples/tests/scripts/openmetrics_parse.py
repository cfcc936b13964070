"""Parses an OpenMetrics exposition on stdin with the Prometheus project's own Python
parser (strict: a malformed line, a wrong type or a missing # EOF is an error) and prints
each sample as JSON, one per line: {"family", "type", "name", "labels", "value"}."""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        print(json.dumps({
            "family": family.name,
            "type": family.type,
            "name": sample.name,
            "labels": sample.labels,
            "value": sample.value,
        }))
