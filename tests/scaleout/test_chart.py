"""The chart's headless Service: one DNS name for every replica's admin listener."""

from __future__ import annotations

from tests.deploy.test_helm import RELEASE, container, one, render


def test_the_headless_service_names_every_pod_on_the_admin_port() -> None:
    docs = render(
        {"config": {"admin": {"port": 9191}}, "serviceMonitor": {"enabled": True}},
        api_versions=["monitoring.coreos.com/v1"],
    )
    replicas = one(docs, "Service", f"{RELEASE}-replicas")
    spec = replicas["spec"]
    assert spec["clusterIP"] == "None" and spec["publishNotReadyAddresses"] is True
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert set(spec["selector"].items()) <= set(pod_labels.items())
    # A pod's address with the Service's port must reach the admin listener itself.
    admin_port = next(p for p in container(docs)["ports"] if p["name"] == "admin")
    assert spec["ports"] == [
        {"name": "admin", "port": admin_port["containerPort"], "targetPort": "admin",
         "protocol": "TCP"}
    ]  # fmt: skip
    assert admin_port["containerPort"] == 9191
    # The ServiceMonitor selects the admin Service only: no pod is scraped twice.
    selector = one(docs, "ServiceMonitor")["spec"]["selector"]["matchLabels"]
    assert not set(selector.items()) <= set(replicas["metadata"]["labels"].items())


def test_without_the_admin_service_the_headless_one_still_names_every_replica() -> None:
    # Discovery (dns+http://) and a StatefulSet's serviceName need it either way.
    docs = render({"adminService": {"enabled": False}})
    assert f"{RELEASE}-admin" not in {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    assert one(docs, "Service", f"{RELEASE}-replicas")["spec"]["clusterIP"] == "None"
