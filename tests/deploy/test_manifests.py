"""The deployment files validate offline: hadolint on the Dockerfile, the compose file against the Compose
specification, the Kubernetes manifests with kubernetes-validate and the custom resources against their vendored CRD
schemas, the alert rules with promtool (syntax and unit tests). Each tool missing here skips its test with one line
(`scripts/setup.sh tools` installs the Python ones, `apt-get install prometheus` gives promtool); CI installs all."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
CRD_SCHEMAS = {
    "ScaledObject": "keda.sh_scaledobject_v1alpha1.json",
    "TriggerAuthentication": "keda.sh_triggerauthentication_v1alpha1.json",
    "ServiceMonitor": "monitoring.coreos.com_servicemonitor_v1.json",
}


def _tool(name: str) -> str:
    for candidate in (ROOT / ".venv-tools" / "bin" / name, ROOT / ".venv" / "bin" / name):
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (scripts/setup.sh tools, or apt-get install prometheus for promtool)")
    return found


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)


def _manifests() -> dict[str, Path]:
    """kind → file, for every manifest the kustomization applies, plus the migration Job."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = [K8S / name for name in kustomization["resources"]] + [K8S / "migration-job.yaml"]
    return {yaml.safe_load(path.read_text())["kind"]: path for path in files}


def test_hadolint_passes_on_the_dockerfile() -> None:
    result = _run(_tool("hadolint"), "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_file_validates_against_the_compose_specification() -> None:
    result = _run(_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "deploy/compose.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_manifests_validate() -> None:
    native = [str(path) for kind, path in _manifests().items() if kind not in CRD_SCHEMAS]
    assert len(native) == 7
    result = _run(_tool("kubernetes-validate"), "--strict", *native)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("kind", sorted(CRD_SCHEMAS))
def test_custom_resources_validate_against_their_vendored_crd_schemas(kind: str, tmp_path: Path) -> None:
    tool = _tool("check-jsonschema")
    schema = str(K8S / "crd-schemas" / CRD_SCHEMAS[kind])
    manifest = _manifests()[kind]
    result = _run(tool, "--schemafile", schema, str(manifest))
    assert result.returncode == 0, result.stdout + result.stderr
    # The schema has teeth: the same object with its spec replaced by a wrong type fails.
    broken = yaml.safe_load(manifest.read_text())
    broken["spec"] = "not an object"
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    assert _run(tool, "--schemafile", schema, str(tmp_path / "broken.yaml")).returncode != 0


def test_the_scaled_object_is_capped_at_the_partition_count_and_grace_exceeds_shutdown_timeout() -> None:
    manifests = _manifests()
    scaled = yaml.safe_load(manifests["ScaledObject"].read_text())
    assert scaled["spec"]["triggers"][0]["metadata"]["allowIdleConsumers"] == "false"
    config = yaml.safe_load(manifests["ConfigMap"].read_text())["data"]
    deployment = yaml.safe_load(manifests["Deployment"].read_text())["spec"]["template"]["spec"]
    assert deployment["terminationGracePeriodSeconds"] > int(config["SHUTDOWN_TIMEOUT"])
    probes = deployment["containers"][0]
    assert (probes["readinessProbe"]["httpGet"]["path"], probes["livenessProbe"]["httpGet"]["path"]) == (
        "/readyz",
        "/healthz",
    )


def test_promtool_checks_the_rules_and_unit_tests_every_alert() -> None:
    promtool = _tool("promtool")
    prometheus = ROOT / "deploy" / "prometheus"
    checked = _run(promtool, "check", "rules", str(prometheus / "alerts.yaml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = _run(promtool, "test", "rules", str(prometheus / "alerts.test.yaml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    rules = yaml.safe_load((prometheus / "alerts.yaml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    tests = yaml.safe_load((prometheus / "alerts.test.yaml").read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case.get("exp_alerts")}
    assert fired == alerts  # every alert has a case where it fires...
    for test in tests:  # ...and each test has a healthy series or a time where nothing fires
        quiet = [case for case in test["alert_rule_test"] if not case.get("exp_alerts")]
        healthy = [s for s in test["input_series"] if 'job="customer-worker"' not in s["series"]]
        assert quiet or healthy or len(test["input_series"]) > 1, test["name"]
