"""Renders and lints charts/tessera with Helm's own Go SDK (the helm-python-sdk wheel), for the
Rust tests in tests/chart.rs and tests/monitoring.rs.

Reads one JSON request on stdin:
  {"chart": PATH, "release": NAME, "namespace": NS,
   "sets": [{"name": NAME, "values": {...}}, ...]}
and writes one JSON answer on stdout, per set:
  {NAME: {"manifests": {TEMPLATE: TEXT}, "crds": [TEXT], "lint": REPORT}
         or {"error": "what Helm said"}}
"""

import json
import sys

import helm_python as helm


def main() -> None:
    request = json.load(sys.stdin)
    chart_path = request["chart"]
    answer = {}
    with helm.Chart.load(chart_path) as chart:
        crds = [c["data"] for c in chart.crds]
        for value_set in request["sets"]:
            values = value_set["values"]
            try:
                manifests = chart.render(
                    values=values,
                    name=request["release"],
                    namespace=request["namespace"],
                    is_install=True,
                )
            except helm.HelmError as error:
                answer[value_set["name"]] = {"error": str(error)}
                continue
            report = helm.lint(
                chart_path, values, strict=True, namespace=request["namespace"]
            )
            answer[value_set["name"]] = {
                "manifests": manifests,
                "crds": crds,
                "lint": report,
            }
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
