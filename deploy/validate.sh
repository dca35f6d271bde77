#!/usr/bin/env bash
# Validates the deployment files (run by .ci/run; see deploy/README.md, "Validation"):
#   1. the Kubernetes kustomize base is rendered with kubectl's built-in kustomize (Debian's kubernetes-client,
#      unpacked into a temporary directory, not installed) and every rendered object is checked against the
#      Kubernetes JSON schemas bundled in the PyPI package kubernetes-validate (a venv in the same directory),
#      in strict mode (unknown fields are errors), with no network (unshare -n) to prove the schemas are local;
#   2. the systemd unit passes `systemd-analyze verify`, run on a temporary copy whose ExecStart is the built
#      binary (LARDER, default target/debug/larder) and whose EnvironmentFile is a copy of deploy/systemd/larder.env.
# Usage: LARDER=path/to/larder deploy/validate.sh
set -euo pipefail
cd "$(dirname "$0")/.."
KUBERNETES_VALIDATE_VERSION=1.37.0
LARDER=${LARDER:-${CARGO_TARGET_DIR:-$PWD/target}/debug/larder}
LARDER=$(realpath "$LARDER")
[[ -x $LARDER ]] || { echo "validate: $LARDER is not built (cargo build -p larder)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/larder-deploy-validate.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

echo "== deploy: kubectl kustomize deploy/k8s (Debian kubernetes-client, unpacked in $WORK)"
(cd "$WORK" && { apt-get download -qq kubernetes-client 2>/dev/null \
    || { apt-get update -qq && apt-get download -qq kubernetes-client; }; } 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
dpkg -x "$WORK"/kubernetes-client_*.deb "$WORK/kubectl"
KUBECTL=$WORK/kubectl/usr/bin/kubectl
"$KUBECTL" kustomize deploy/k8s >"$WORK/rendered.yaml"
objects=$(grep -c '^kind:' "$WORK/rendered.yaml")
echo "rendered $objects objects"
((objects == 6)) || { echo "validate: expected 6 objects (namespace, 2 services, deployment, daemonset, pdb)" >&2; exit 1; }

echo "== deploy: kubernetes-validate $KUBERNETES_VALIDATE_VERSION --strict (bundled schemas, no network)"
python3 -m venv "$WORK/venv" >/dev/null 2>&1 || {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$WORK/venv"
}
"$WORK/venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
offline=()
if unshare -n true 2>/dev/null; then offline=(unshare -n); fi
"${offline[@]}" "$WORK/venv/bin/kubernetes-validate" --strict --quiet "$WORK/rendered.yaml"
echo "kubernetes-validate: $objects objects valid${offline:+ (offline)}"

echo "== deploy: systemd-analyze verify deploy/systemd/larder.service (ExecStart=$LARDER)"
command -v systemd-analyze >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
cp deploy/systemd/larder.env "$WORK/larder.env"
sed -e "s|/usr/local/bin/larder|$LARDER|" -e "s|^EnvironmentFile=/etc/larder/larder.env|EnvironmentFile=$WORK/larder.env|" \
    deploy/systemd/larder.service >"$WORK/larder.service"
# verify exits 0 on unknown keys and bad values (it only warns), so any output is a failure.
report=$(systemd-analyze verify "$WORK/larder.service" 2>&1) || { echo "$report" >&2; exit 1; }
if [[ -n $report ]]; then echo "$report" >&2; exit 1; fi
echo "systemd-analyze verify: clean"
