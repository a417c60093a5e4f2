#!/usr/bin/env bash
# make demo: the user's story on the local cluster. The platform admin
# installs the operator with Helm (it runs as a pod on the node, from the
# image `make image` built, with IRSA-style credentials from the local STS)
# and says who may have what; a user asks for an upload grant; a Job mounts
# the grant's Secret and uploads through it; the object is read back; the
# grant is revoked; a second release signs browser-form (POST) grants for
# another namespace and curl posts a form through one; the operators are
# uninstalled.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
say() { printf '    %s\n' "$*"; }
show() { printf '    $ %s\n' "$*"; "$@" 2>&1 | sed 's/^/    /'; }

SYSTEM=upload-grant-system
NS=analytics
WEB=web
ISSUER=demo
RELEASE=upload-grant-operator
FORMS=upload-grant-forms
KEEP="${KEEP:-}"

# What the demo needs and changes, said before anything is built.
intro() {
  cat <<'TEXT'
make demo: the operator on a local cluster, as a platform team and its users meet it.
  Needs:   root on a Debian-like Linux machine with Rust and Go; about 2 GB in
           ~/.cache/upload-grant-operator (plus Go's and Cargo's caches).
  Takes:   about 30 minutes the first time (kube-apiserver, etcd, kubelet, containerd,
           helm, the S3/STS server and both images are built from registry packages and
           cached), a few minutes after that.
  Changes: while it runs, a network bridge and namespaces for the pods, mounts and cgroups
           for the node, and six kernel settings the kubelet needs (vm.overcommit_memory,
           vm.panic_on_oom, kernel.panic, kernel.panic_on_oops, kernel.keys.root_maxkeys,
           kernel.keys.root_maxbytes); stopping the environment puts them back and
           removes the rest.
  KEEP=1:  leaves the cluster, the operators and the grants running to explore;
           `make demo-down` stops it all.
TEXT
}

# Uninstalls what the demo installed; with "all", stops the environment too.
uninstall() {
  kubectl delete namespace "$NS" "$WEB" --ignore-not-found --wait=true >/dev/null 2>&1 || true
  kubectl delete clustergrantissuer "$ISSUER" --ignore-not-found >/dev/null 2>&1 || true
  helm uninstall "$FORMS" -n "$SYSTEM" >/dev/null 2>&1 || true
  helm uninstall "$RELEASE" -n "$SYSTEM" >/dev/null 2>&1 || true
  kubectl delete namespace "$SYSTEM" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  if [ "${1:-}" = all ]; then bash tools/testenv/down.sh; fi
}

case "${1:-run}" in
  intro) intro; exit 0 ;;
  down)
    if bash tools/testenv/status.sh >/dev/null 2>&1; then
      set +u; . .testenv/env; set -u
      export PATH="$TESTENV_BIN:$PATH"
      step "Uninstalling the demo and stopping its environment"
      uninstall all
    fi
    say "stopped"
    exit 0 ;;
  run) ;;
  *) echo "usage: tools/demo.sh [intro|down|run]" >&2; exit 2 ;;
esac

started_env=0
if ! bash tools/testenv/status.sh >/dev/null 2>&1; then
  step "Starting the local cluster: control plane, a node, an image registry, S3 and STS (tools/testenv/up.sh)"
  bash tools/testenv/up.sh
  started_env=1
fi
set +u; . .testenv/env; set -u
[ -n "${TESTENV_CONTAINERD_ADDRESS:-}" ] || { echo "the demo needs the node: start the environment without TESTENV_NODE=0" >&2; exit 1; }
export PATH="$TESTENV_BIN:$PATH"
WORK="$(mktemp -d)"
cleanup() {
  rm -rf "$WORK"
  if [ "$KEEP" = 1 ]; then explore; return; fi
  step "Cleaning up"
  if [ $started_env = 1 ]; then uninstall all; else uninstall; fi
  say "done"
}
# KEEP=1: where things are and how to stop them.
explore() {
  step "Left running (KEEP=1)"
  say "export KUBECONFIG=$KUBECONFIG PATH=$TESTENV_BIN:\$PATH"
  say "kubectl get ug,secrets -n $NS          # the grants and the Secrets they write"
  say "kubectl describe ug -n $NS             # conditions and events of each grant"
  say "kubectl get pods,lease -n $SYSTEM      # the operators and their leader Lease"
  say "kubectl logs -n $SYSTEM deploy/$RELEASE   # what the operator did (no URL is logged)"
  say "S3 (loopback): $TESTENV_S3_ENDPOINT, bucket $TESTENV_BUCKET"
  say "stop it all:   make demo-down"
}
trap cleanup EXIT

step "Pushing the images to the environment's registry, as to ECR (make push; the node pulls them from there)"
show tools/image/push.sh target/image/upload-grant-operator.tar "$TESTENV_IMAGE"
CONSUMERS=$(tools/image/push.sh target/image/upload-grant-consumers.tar "$TESTENV_REGISTRY/upload-grant-consumers:dev")
say "consumers: $CONSUMERS"

step "Platform admin: helm install, with the values that differ from EKS on this node"
grep -v '^#' "$TESTENV_DIR/node-values.yaml" | sed 's/^/    | /'
# The release serves namespace $NS (its Secret RBAC is a Role there, so the
# namespace comes first); $WEB gets a release of its own below.
for ns in "$NS" "$WEB"; do
  kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  kubectl label namespace "$ns" team=analytics --overwrite >/dev/null
done
show helm install "$RELEASE" charts/upload-grant-operator -n "$SYSTEM" --create-namespace \
  --take-ownership -f "$TESTENV_DIR/node-values.yaml" --set "operator.watchNamespaces={$NS}" \
  --wait --timeout 3m
show kubectl get pods -n "$SYSTEM" -o wide

step "Platform admin: namespaces labelled team=analytics may upload under their own prefix"
kubectl apply -f - >/dev/null <<YAML
apiVersion: grants.io/v1alpha1
kind: ClusterGrantIssuer
metadata: {name: $ISSUER}
spec:
  s3: {region: $TESTENV_REGION, endpoint: "$TESTENV_S3_ENDPOINT", forcePathStyle: true}
  allow:
  - namespaces: {matchLabels: {team: analytics}}
    buckets: [$TESTENV_BUCKET]
    keyPrefixes: ["{namespace}/"]
    methods: [PUT, GET, POST]
    maxTtl: 6h
YAML
show kubectl get clustergrantissuer "$ISSUER"

step "User: an upload grant in namespace $NS"
KEY="$NS/nightly-$(date +%s).csv"
kubectl apply -n "$NS" -f - >/dev/null <<YAML
apiVersion: grants.io/v1alpha1
kind: UploadGrant
metadata: {name: nightly-report-upload}
spec:
  issuerRef: {name: $ISSUER}
  bucket: $TESTENV_BUCKET
  key: $KEY
  method: PUT
  ttl: 1h
  contentType: text/csv
YAML
show kubectl wait -n "$NS" --for=condition=Ready ug/nightly-report-upload --timeout=60s
show kubectl get ug -n "$NS"
say "Secret keys: $(kubectl get secret nightly-report-upload -n "$NS" -o jsonpath='{.data}' |
  python3 -c 'import json,sys; print(" ".join(sorted(json.load(sys.stdin))))') (the URL is a credential: not printed)"

step "User: a Job mounts the Secret and uploads with curl (examples/curl-job.yaml)"
# The example as a user would apply it; this node has no pod route to S3's
# loopback address, so the Job shares the node's network, and it runs the
# locally built consumer image.
kubectl create --dry-run=client -o json -f examples/curl-job.yaml |
  python3 -c '
import json, sys
job = json.load(sys.stdin)
pod = job["spec"]["template"]["spec"]
pod["hostNetwork"] = True
for c in pod["containers"]:
    c["image"] = sys.argv[1]
print(json.dumps(job))' "$CONSUMERS" | kubectl apply -n "$NS" -f - >/dev/null
kubectl wait -n "$NS" --for=condition=Complete job/upload-nightly-report --timeout=180s >/dev/null ||
  { kubectl logs -n "$NS" job/upload-nightly-report; exit 1; }
show kubectl get jobs -n "$NS"

step "Reading it back through a download grant (GET), from the host with curl"
kubectl apply -n "$NS" -f - >/dev/null <<YAML
apiVersion: grants.io/v1alpha1
kind: UploadGrant
metadata: {name: nightly-report-download}
spec:
  issuerRef: {name: $ISSUER}
  bucket: $TESTENV_BUCKET
  key: $KEY
  method: GET
  ttl: 15m
YAML
kubectl wait -n "$NS" --for=condition=Ready ug/nightly-report-download --timeout=60s >/dev/null
secret() { kubectl get secret "$1" -n "$NS" -o jsonpath="{.data.$2}" | base64 -d; }
curl --fail-with-body -sS -X "$(secret nightly-report-download method)" "$(secret nightly-report-download url)" | sed 's/^/    | /'

step "Revoking: deleting the grant removes its Secret"
kubectl delete ug nightly-report-upload -n "$NS" --wait=true >/dev/null
if kubectl get secret nightly-report-upload -n "$NS" >/dev/null 2>&1; then say "Secret still there"; exit 1; fi
say "Secret nightly-report-upload is gone"
kubectl get events -n "$NS" --field-selector involvedObject.kind=UploadGrant \
  -o custom-columns=REASON:.reason,OBJECT:.involvedObject.name,MESSAGE:.message --sort-by=.metadata.creationTimestamp | sed 's/^/    /'

step "Browser uploads: a POST grant in namespace $WEB, sent as a form by curl"
say "The test store accepts forms signed with static keys only (not with a session token), so a"
say "second release, for namespace $WEB only, signs with the store's keys instead of IRSA."
apiserver_port="${TESTENV_APISERVER_URL##*:}"
cat >"$WORK/forms-values.yaml" <<YAML
irsa: {projectedToken: {enabled: false}, roleArn: "", region: "", stsEndpoint: ""}
crds: {install: false}
operator:
  watchNamespaces: [$WEB]
  env:
    - {name: KUBERNETES_SERVICE_HOST, value: "$TESTENV_POD_GATEWAY"}
    - {name: KUBERNETES_SERVICE_PORT, value: "$apiserver_port"}
    - {name: AWS_REGION, value: "$TESTENV_REGION"}
    - {name: AWS_ACCESS_KEY_ID, value: "$TESTENV_ROOT_ACCESS_KEY_ID"}
    - {name: AWS_SECRET_ACCESS_KEY, value: "$TESTENV_ROOT_SECRET_ACCESS_KEY"}
YAML
show helm install "$FORMS" charts/upload-grant-operator -n "$SYSTEM" \
  -f "$TESTENV_DIR/node-values.yaml" -f "$WORK/forms-values.yaml" --wait --timeout 3m
kubectl apply -n "$WEB" -f - >/dev/null <<YAML
apiVersion: grants.io/v1alpha1
kind: UploadGrant
metadata: {name: report-form}
spec:
  issuerRef: {name: $ISSUER}
  bucket: $TESTENV_BUCKET
  key: $WEB/forms/\${filename}
  method: POST
  ttl: 15m
  contentLengthRange: {min: 1, max: 1Mi}
  contentType: text/csv
YAML
show kubectl wait -n "$WEB" --for=condition=Ready ug/report-form --timeout=60s
websecret() { kubectl get secret "$1" -n "$WEB" -o jsonpath="{.data.$2}" | base64 -d; }
say "fields: $(websecret report-form fields | jq -r 'keys_unsorted | join(" ")') (values not printed: a credential until expiresAt)"
printf 'day,total\n2026-12-02,7\n' >"$WORK/daily.csv"
# Every field in order as a literal string, then the file (docs/src/consuming.md: POST grants).
mapfile -t form < <(websecret report-form fields | jq -r 'to_entries[] | "--form-string", "\(.key)=\(.value)"')
say '$ curl --form-string "NAME=VALUE" (each field, in order) -F file=@daily.csv FORM-URL'
curl --fail-with-body -sS -o /dev/null -w '    HTTP %{http_code}\n' "${form[@]}" \
  -F "file=@$WORK/daily.csv;type=text/csv" "$(websecret report-form url)"
kubectl apply -n "$WEB" -f - >/dev/null <<YAML
apiVersion: grants.io/v1alpha1
kind: UploadGrant
metadata: {name: daily-download}
spec:
  issuerRef: {name: $ISSUER}
  bucket: $TESTENV_BUCKET
  key: $WEB/forms/daily.csv
  method: GET
  ttl: 15m
YAML
kubectl wait -n "$WEB" --for=condition=Ready ug/daily-download --timeout=60s >/dev/null
say "read back as $WEB/forms/daily.csv (the form filled in \${filename}):"
curl --fail-with-body -sS "$(websecret daily-download url)" | sed 's/^/    | /'

[ "$KEEP" = 1 ] && exit 0
step "Deleting the tenants' namespaces while the operators run: they revoke every grant left"
show kubectl delete namespace "$NS" "$WEB" --wait=true --timeout=2m

step "Platform admin: helm uninstall (the operators release their leases and stop)"
show helm uninstall "$FORMS" -n "$SYSTEM" --wait
show helm uninstall "$RELEASE" -n "$SYSTEM" --wait
say "Lease $RELEASE holder: '$(kubectl get lease "$RELEASE" -n "$SYSTEM" -o jsonpath='{.spec.holderIdentity}')' (released)"
